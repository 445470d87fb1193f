#ifndef KVANT_CKERNELS_H
#define KVANT_CKERNELS_H
#include <stddef.h>
#include <stdint.h>
/* Kvant's intrinsics-level CPU kernels. Declarations are added per kernel file. */
int kvant_ckernels_version(void);
#endif
