#ifndef UVPROXY_CUV_SHIM_H
#define UVPROXY_CUV_SHIM_H
#include <uv.h>
#include <http_parser.h>
#include <signal.h>
#include <sys/resource.h>
#endif
