import Foundation
import SagaEngine
import Synchronization

/// CPU time and memory of a process, read from /proc/<pid>/stat and /proc/<pid>/status (Linux).
struct ProcessSample: Sendable, Equatable {
    /// User + system CPU seconds of the process itself.
    var cpuSeconds: Double
    /// User + system CPU seconds of its children that it has waited for (PostgreSQL's ended backends).
    var childrenCPUSeconds: Double
    var parent: Int32
    /// VmRSS and VmHWM (the peak resident set size over the process's life), in bytes.
    var rss: Int
    var peakRSS: Int

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// Nil when the process does not exist or /proc is not readable.
    static func read(_ pid: Int32) -> ProcessSample? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        else { return nil }
        return parse(stat: stat, status: status)
    }

    /// `stat`: "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so fields count from the
    /// last ')'. utime, stime, cutime, cstime are fields 14–17 (clock ticks).
    static func parse(stat: String, status: String) -> ProcessSample? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so field n is fields[n - 3].
        guard fields.count > 14, let ppid = Int32(fields[1]), let utime = Double(fields[11]),
            let stime = Double(fields[12]), let cutime = Double(fields[13]), let cstime = Double(fields[14])
        else { return nil }
        func kB(_ key: String) -> Int {
            for line in status.split(separator: "\n") where line.hasPrefix(key + ":") {
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if parts.count >= 2, let n = Int(parts[1]) { return n * 1024 }
            }
            return 0
        }
        return ProcessSample(
            cpuSeconds: (utime + stime) / ticksPerSecond, childrenCPUSeconds: (cutime + cstime) / ticksPerSecond,
            parent: ppid, rss: kB("VmRSS"), peakRSS: kB("VmHWM"))
    }

    /// The processes whose parent is `pid`.
    static func children(of pid: Int32) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == pid
        }
    }
}

/// A process the benchmark watches: a daemon of the stack, the benchmark itself, or the PostgreSQL server
/// (the postmaster and all its backends, as one).
struct WatchedProcess: Sendable {
    var name: String
    var pid: Int32
    /// The whole PostgreSQL server: the postmaster's own CPU, its reaped children's, and its live children's.
    var withChildren = false

    /// CPU seconds so far (for a server with children: all of them, ended ones included), and memory.
    func sample() -> (cpu: Double, rss: Int, peakRSS: Int)? {
        guard let own = ProcessSample.read(pid) else { return nil }
        guard withChildren else { return (own.cpuSeconds, own.rss, own.peakRSS) }
        var cpu = own.cpuSeconds + own.childrenCPUSeconds
        for child in ProcessSample.children(of: pid) { cpu += ProcessSample.read(child)?.cpuSeconds ?? 0 }
        return (cpu, own.rss, own.peakRSS)
    }
}

/// CPU seconds a process used during a phase, and its memory (peak and at the end).
struct ProcessFigures: Sendable {
    var name: String
    var pid: Int32
    var cpuSeconds: Double
    var cpuShare: Double
    var rssEnd: Int?
    var rssPeak: Int?

    var json: JSONValue {
        .object([
            "name": .string(name), "pid": .integer(Int64(pid)), "cpuSeconds": .number(round2(cpuSeconds)),
            "cpuPercent": .number(round1(cpuShare * 100)),
            "rssEndMB": rssEnd.map { .number(round1(Double($0) / 1_048_576)) } ?? .null,
            "rssPeakMB": rssPeak.map { .number(round1(Double($0) / 1_048_576)) } ?? .null,
        ])
    }

    var text: String {
        let memory =
            rssEnd.map { end in
                "RSS peak \(fmt(Double(rssPeak ?? end) / 1_048_576)) MB, end \(fmt(Double(end) / 1_048_576)) MB"
            } ?? "RSS n/a (shared memory: see the server's own tools)"
        return "\(name) (pid \(pid)): \(fmt(cpuSeconds)) CPU s (\(fmt(cpuShare * 100)) % of one core), \(memory)"
    }
}

/// Samples the watched processes at the start and end of a phase, and their RSS every 100 ms in between
/// (the peak is the larger of that and the kernel's own high-water mark, VmHWM, since the process started).
final class ProcessWatch: Sendable {
    let processes: [WatchedProcess]
    private let peaks: Mutex<[Int32: Int]>

    init(_ processes: [WatchedProcess]) {
        self.processes = processes
        self.peaks = Mutex([:])
    }

    func begin() -> [Int32: Double] {
        var cpu: [Int32: Double] = [:]
        for p in processes { cpu[p.pid] = p.sample()?.cpu }
        return cpu
    }

    /// Samples RSS until cancelled.
    func sampleRSS() async {
        while !Task.isCancelled {
            for p in processes where !p.withChildren {
                if let s = ProcessSample.read(p.pid) {
                    peaks.withLock { $0[p.pid] = Swift.max($0[p.pid] ?? 0, s.rss) }
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    func end(_ start: [Int32: Double], seconds: Double) -> [ProcessFigures] {
        processes.compactMap { p in
            guard let s = p.sample(), let before = start[p.pid] else { return nil }
            let used = s.cpu - before
            let sampledPeak = peaks.withLock { $0[p.pid] } ?? 0
            return ProcessFigures(
                name: p.name, pid: p.pid, cpuSeconds: used, cpuShare: seconds > 0 ? used / seconds : 0,
                rssEnd: p.withChildren ? nil : s.rss, rssPeak: p.withChildren ? nil : Swift.max(s.peakRSS, sampledPeak))
        }
    }
}

/// Counters and histograms the daemons serve on /metrics (Prometheus text format), summed over label sets.
struct MetricsScrape: Sendable {
    var values: [String: Double] = [:]
    var reachable = 0

    /// Sums every sample of each metric name (all label sets) in Prometheus text exposition format.
    static func parse(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let nameEnd = line.firstIndex(where: { $0 == "{" || $0 == " " }) ?? line.endIndex
            guard nameEnd != line.endIndex, let last = line.split(separator: " ").last, let value = Double(last)
            else { continue }
            values[String(line[..<nameEnd]), default: 0] += value
        }
        return values
    }

    /// Scrapes every URL; unreachable ones are left out (and counted as such).
    static func scrape(_ urls: [String]) async -> MetricsScrape {
        var result = MetricsScrape()
        for url in urls {
            guard let (status, body) = try? await LocalHTTP.send(.GET, url, timeout: .seconds(5)), status == 200
            else { continue }
            result.reachable += 1
            for (k, v) in parse(String(decoding: body, as: UTF8.self)) { result.values[k, default: 0] += v }
        }
        return result
    }

    func delta(_ name: String, since before: MetricsScrape) -> Double? {
        guard let now = values[name] else { return nil }
        return now - (before.values[name] ?? 0)
    }
}

/// The relays' own figures over a phase, from their /metrics.
struct RelayFigures: Sendable {
    var published: Double
    var rowsPerSecond: Double
    /// Mean outbox lag (outbox insert → broker acknowledgement) the relays recorded, when they serve it.
    var meanLagMs: Double?
    var backlogEnd: Double?
    var endpoints: Int

    static let publishedMetric = "saga_relay_published_total"
    static let lagMetric = "saga_relay_outbox_lag_seconds"
    static let backlogMetric = "saga_outbox_backlog"

    init?(before: MetricsScrape, after: MetricsScrape, seconds: Double) {
        guard after.reachable > 0, let published = after.delta(Self.publishedMetric, since: before) else {
            return nil
        }
        self.published = published
        rowsPerSecond = seconds > 0 ? published / seconds : 0
        if let sum = after.delta(Self.lagMetric + "_sum", since: before),
            let count = after.delta(Self.lagMetric + "_count", since: before), count > 0
        {
            meanLagMs = sum / count * 1000
        }
        backlogEnd = after.values[Self.backlogMetric]
        endpoints = after.reachable
    }

    var json: JSONValue {
        .object([
            "published": .integer(Int64(published)), "rowsPerSecond": .number(round1(rowsPerSecond)),
            "meanOutboxLagMs": meanLagMs.map { .number(round2($0)) } ?? .null,
            "backlogAtEnd": backlogEnd.map { .integer(Int64($0)) } ?? .null,
            "metricsEndpoints": .integer(Int64(endpoints)),
        ])
    }

    var text: String {
        "\(Int(published)) rows published (any saga's), \(fmt(rowsPerSecond)) rows/s over the phase"
            + (meanLagMs.map { ", outbox lag mean \(fmt($0)) ms (insert → broker ack)" } ?? "")
            + (backlogEnd.map { ", backlog at end \(Int($0))" } ?? "")
            + "   (relays' /metrics, \(endpoints) endpoint(s))"
    }
}
