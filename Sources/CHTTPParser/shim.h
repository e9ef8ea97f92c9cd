#ifndef KAA_CHTTPPARSER_SHIM_H
#define KAA_CHTTPPARSER_SHIM_H
#include <http_parser.h>

/* Accessors for http_parser's bitfields, which HTTP_PARSER_ERRNO and friends read as macros. */
static inline enum http_errno kaa_http_errno(const http_parser *p) { return HTTP_PARSER_ERRNO(p); }
static inline unsigned int kaa_http_method(const http_parser *p) { return p->method; }
static inline unsigned int kaa_http_status(const http_parser *p) { return p->status_code; }
static inline int kaa_http_uses_transfer_encoding(const http_parser *p) { return p->uses_transfer_encoding; }
static inline int kaa_http_is_chunked(const http_parser *p) { return (p->flags & F_CHUNKED) != 0; }
static inline int kaa_http_upgrade(const http_parser *p) { return p->upgrade; }
#endif
