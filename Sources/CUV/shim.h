#ifndef UVPROXY_CUV_SHIM_H
#define UVPROXY_CUV_SHIM_H
#include <uv.h>
#include <malloc.h>  /* mallinfo2: the tests measure what hostile peers make the daemon hold */
#include <http_parser.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
/* libcrypto (OpenSSL): SHA-1 and base64 for the WebSocket handshake's Sec-WebSocket-Accept
 * (RFC 6455 §4.2.2); nothing else of OpenSSL is used. */
#include <openssl/sha.h>
#include <openssl/evp.h>

/* accept4 is a GNU extension that the Glibc module does not declare. Used by TCPListener:
 * the accepted socket is non-blocking and close-on-exec from the start. */
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
static inline int cuv_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

#endif
