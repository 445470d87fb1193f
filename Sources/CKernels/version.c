#include "ckernels.h"
int kvant_ckernels_version(void) { return 1; }
