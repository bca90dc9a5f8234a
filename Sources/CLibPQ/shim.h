#ifndef SAGA_CLIBPQ_SHIM_H
#define SAGA_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
