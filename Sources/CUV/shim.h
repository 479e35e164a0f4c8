#ifndef UVPROXY_CUV_SHIM_H
#define UVPROXY_CUV_SHIM_H
#include <uv.h>
#include <malloc.h>  /* mallinfo2: the tests measure what hostile peers make the daemon hold */
#include <http_parser.h>
#include <signal.h>
#include <sys/resource.h>

/* uv_loop_configure is variadic, which Swift cannot call: the one option we use. */
static inline int cuv_loop_enable_idle_time(uv_loop_t *loop) {
    return uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
}
#endif
