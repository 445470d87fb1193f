#ifndef KVANT_CSYSTEMD_SHIM_H
#define KVANT_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#endif
