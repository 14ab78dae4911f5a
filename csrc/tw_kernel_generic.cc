// The TW kernel compiled for generic (flags: CMakeLists.txt); see tw_kernel_impl.h.
#define TWK_NS generic
#define TWK_VW 4
#define TWK_NAME "generic"
#include "tw_kernel_impl.h"
