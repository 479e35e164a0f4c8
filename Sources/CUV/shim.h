#ifndef UVPROXY_CUV_SHIM_H
#define UVPROXY_CUV_SHIM_H
#include <uv.h>
#include <malloc.h>  /* mallinfo2: the tests measure what hostile peers make the daemon hold */
#include <http_parser.h>
#include <signal.h>
#include <sys/resource.h>
#endif
