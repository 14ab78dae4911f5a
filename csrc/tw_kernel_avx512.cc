// The TW kernel compiled for avx512 (flags: CMakeLists.txt); see tw_kernel_impl.h.
#define TWK_NS avx512
#define TWK_VW 16
#define TWK_NAME "avx512"
#include "tw_kernel_impl.h"
