#ifndef KAA_CHTTPPARSER_SHIM_H
#define KAA_CHTTPPARSER_SHIM_H
#include <http_parser.h>

/// The parser's error code; `HTTP_PARSER_ERRNO` is a macro over a bitfield.
static inline enum http_errno kaa_http_parser_errno(const http_parser *parser) {
    return HTTP_PARSER_ERRNO(parser);
}
#endif
