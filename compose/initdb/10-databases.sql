-- One database per service, and one for the tracker's read model. The postgres image runs this once, as
-- POSTGRES_USER (saga, the owner), when it creates an empty data folder. Each saga process then creates its
-- own schema in its database (`saga migrate`, and every worker, relay and tracker at start).
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE billing;
CREATE DATABASE tracker;
