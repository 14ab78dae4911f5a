// The TW kernel compiled for avx2 (flags: CMakeLists.txt); see tw_kernel_impl.h.
#define TWK_NS avx2
#define TWK_VW 8
#define TWK_NAME "avx2"
#include "tw_kernel_impl.h"
