/*
 * JSON text as QEMU reads it, into jansson values.
 *
 * QEMU's reader is not jansson's: it takes single-quoted strings (where a
 * double quote needs no escape), "\'" in either kind of string, integers up
 * to 2^64-1, "\u0000" (kept as the modified UTF-8 pair C0 80), refuses
 * duplicate keys, and cuts the input into tokens before it parses, so its
 * messages name a "stray" piece of text or a parse step.  Command lines and
 * "json:" filenames must behave as with qemu-img, messages included, so the
 * behaviour is rebuilt here: a lexer that works one byte at a time, a
 * splitter that hands over one value whenever its brackets balance, and a
 * recursive parser that keeps the first error it meets.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "strata/error.h"
#include "strata/json-reader.h"
#include "strata/opts.h"

/* Resource limits of QEMU's reader, so that huge input fails alike. */
#define MAX_TEXT_BYTES  (64ULL << 20)
#define MAX_TOKENS      (2ULL << 20)
#define MAX_DEPTH       1024

typedef enum {
    TOK_LCURLY, TOK_RCURLY, TOK_LSQUARE, TOK_RSQUARE, TOK_COLON, TOK_COMMA,
    TOK_STRING, TOK_INTEGER, TOK_FLOAT, TOK_KEYWORD,
} TokType;

typedef struct {
    TokType type;
    char *text;
} Token;

typedef enum {
    L_START, L_RECOVER,
    L_DQ, L_DQ_ESC, L_SQ, L_SQ_ESC,
    L_SIGN, L_ZERO, L_DIGITS, L_POINT, L_FRACTION, L_EXP, L_EXP_SIGN,
    L_EXP_DIGITS, L_KEYWORD,
} LexState;

typedef struct {
    /* lexer */
    LexState state;
    GString *text;
    /* splitter: the tokens of the value under way */
    GPtrArray *tokens;
    uint64_t token_bytes;
    int braces, brackets;
    /* result */
    json_t *value;
    GError *err;
    /* parser */
    guint pos;
    GError *parse_err;
    /* stream mode: every value or error goes to emit, none is kept */
    JsonReaderEmit *emit;
    void *opaque;
} Reader;

static void token_free(gpointer p)
{
    Token *t = p;
    g_free(t->text);
    g_free(t);
}

/* ---- the parser, over the tokens of one value ---- */

static void G_GNUC_PRINTF(2, 3) parse_fail(Reader *r, const char *fmt, ...)
{
    if (r->parse_err) {
        return;                 /* the first complaint is the one reported */
    }
    va_list ap;
    va_start(ap, fmt);
    char *why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->parse_err = g_error_new(STRATA_ERROR, 0, "JSON parse error, %s", why);
    g_free(why);
}

static Token *peek(Reader *r)
{
    return r->pos < r->tokens->len ? r->tokens->pdata[r->pos] : NULL;
}

static Token *next(Reader *r)
{
    Token *t = peek(r);
    if (t) {
        r->pos++;
    }
    return t;
}

static bool valid_codepoint(long cp)
{
    if (cp < 0 || cp > 0x10FFFF) {
        return false;
    }
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) {
        return false;           /* Unicode noncharacters */
    }
    return !(cp >= 0xD800 && cp <= 0xDFFF);     /* nor surrogates */
}

/* Modified UTF-8: U+0000 is written C0 80, so strings stay NUL-free. */
static bool put_codepoint(GString *out, long cp)
{
    if (!valid_codepoint(cp)) {
        return false;
    }
    if (cp > 0 && cp < 0x80) {
        g_string_append_c(out, (char)cp);
    } else if (cp < 0x800) {
        g_string_append_c(out, (char)(0xC0 | (cp >> 6)));
        g_string_append_c(out, (char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        g_string_append_c(out, (char)(0xE0 | (cp >> 12)));
        g_string_append_c(out, (char)(0x80 | ((cp >> 6) & 0x3F)));
        g_string_append_c(out, (char)(0x80 | (cp & 0x3F)));
    } else {
        g_string_append_c(out, (char)(0xF0 | (cp >> 18)));
        g_string_append_c(out, (char)(0x80 | ((cp >> 12) & 0x3F)));
        g_string_append_c(out, (char)(0x80 | ((cp >> 6) & 0x3F)));
        g_string_append_c(out, (char)(0x80 | (cp & 0x3F)));
    }
    return true;
}

/*
 * One character of modified UTF-8 at *p (advanced past what was read), or
 * -1 if it is malformed, overlong (except C0 80), a surrogate, a
 * noncharacter or beyond U+10FFFF.
 */
static long read_codepoint(const char **p)
{
    const unsigned char *s = (const unsigned char *)*p;
    unsigned lead = *s++;
    long cp;

    if (lead < 0x80) {
        cp = lead;
    } else if (lead >= 0xFE || !(lead & 0x40)) {
        cp = -1;                /* impossible byte, or a stray continuation */
    } else {
        static const long shortest[] = { 0x80, 0x800, 0x10000, 0x200000,
                                         0x4000000 };
        int len = 0;
        unsigned mask = 0x80;
        while (lead & mask) {
            len++;
            mask >>= 1;
        }
        cp = lead & (mask - 1);
        for (int i = 1; i < len; i++) {
            if ((*s & 0xC0) != 0x80) {
                *p = (const char *)s;
                return -1;
            }
            cp = (cp << 6) | (*s++ & 0x3F);
        }
        if (!valid_codepoint(cp) ||
            (cp < shortest[len - 2] && !(cp == 0 && len == 2))) {
            cp = -1;
        }
    }
    *p = (const char *)s;
    return cp;
}

static long hex4(const char *s)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        if (!g_ascii_isxdigit(s[i])) {
            return -1;
        }
        v = v * 16 + g_ascii_xdigit_value(s[i]);
    }
    return v;
}

static json_t *parse_string(Reader *r, const char *tok)
{
    char quote = *tok;
    const char *p = tok + 1;
    GString *out = g_string_new(NULL);

    while (*p != quote) {
        if (*p != '\\') {
            long cp = read_codepoint(&p);
            if (!put_codepoint(out, cp)) {
                parse_fail(r, "invalid UTF-8 sequence in string");
                goto fail;
            }
            continue;
        }
        const char *esc = p++;
        static const char from[] = "\"'\\/bfnrt";
        static const char to[] = "\"'\\/\b\f\n\r\t";
        const char *known = *p ? strchr(from, *p) : NULL;
        if (known) {
            g_string_append_c(out, to[known - from]);
            p++;
            continue;
        }
        if (*p != 'u') {
            parse_fail(r, "invalid escape sequence in string");
            goto fail;
        }
        p++;
        long cp = hex4(p);
        /* the lexer guarantees the closing quote, so 4 bytes are there
         * unless the escape is cut short, which hex4 has refused */
        p += cp < 0 ? strnlen(p, 4) : 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && p[0] == '\\' && p[1] == 'u') {
            long low = hex4(p + 2);
            if (low >= 0xDC00 && low <= 0xDFFF) {
                cp = 0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF);
                p += 6;
            } else {
                cp = -1;
            }
        }
        if (!put_codepoint(out, cp)) {
            parse_fail(r, "%.*s is not a valid Unicode character",
                       (int)(p - esc), esc);
            goto fail;
        }
    }
    json_t *v = json_stringn_nocheck(out->str, out->len);
    g_string_free(out, TRUE);
    return v;

fail:
    g_string_free(out, TRUE);
    return NULL;
}

static json_t *parse_number(Reader *r, Token *t)
{
    if (t->type == TOK_INTEGER) {
        char *end;
        errno = 0;
        long long v = strtoll(t->text, &end, 10);
        if (errno != ERANGE) {
            return json_integer(v);
        }
        if (t->text[0] != '-') {
            errno = 0;
            (void)strtoull(t->text, &end, 10);
            if (errno != ERANGE && !r->emit) {
                /*
                 * Above INT64_MAX jansson has no integer; options read
                 * numbers as their text, so keep the digits.  (A QMP
                 * stream gets a number instead: QEMU's uint64 is lost
                 * here, beyond it QEMU has a double too.)
                 */
                return json_string(t->text);
            }
        }
    }
    double d = strtod(t->text, NULL);
    if (!isfinite(d)) {
        /* jansson keeps no infinities; QEMU would print this one so */
        return json_string(d > 0 ? "inf" : "-inf");
    }
    return json_real(d);
}

static json_t *parse_value(Reader *r);

static json_t *parse_object(Reader *r)
{
    json_t *obj = json_object();
    next(r);                                    /* '{' */
    Token *t = peek(r);
    if (!t) {
        parse_fail(r, "premature EOI");
        goto fail;
    }
    if (t->type == TOK_RCURLY) {
        next(r);
        return obj;
    }
    for (;;) {
        t = peek(r);
        if (!t) {
            parse_fail(r, "premature EOI");
            goto fail;
        }
        json_t *key = parse_value(r);
        if (!json_is_string(key)) {
            json_decref(key);
            parse_fail(r, "key is not a string in object");
            goto fail;
        }
        t = next(r);
        if (!t || t->type != TOK_COLON) {
            json_decref(key);
            parse_fail(r, t ? "missing : in object pair" : "premature EOI");
            goto fail;
        }
        json_t *val = parse_value(r);
        if (!val) {
            json_decref(key);
            parse_fail(r, "Missing value in dict");
            goto fail;
        }
        const char *k = json_string_value(key);
        if (json_object_get(obj, k)) {
            json_decref(key);
            json_decref(val);
            parse_fail(r, "duplicate key");
            goto fail;
        }
        json_object_set_new_nocheck(obj, k, val);
        json_decref(key);

        t = next(r);
        if (!t) {
            parse_fail(r, "premature EOI");
            goto fail;
        }
        if (t->type == TOK_RCURLY) {
            return obj;
        }
        if (t->type != TOK_COMMA) {
            parse_fail(r, "expected separator in dict");
            goto fail;
        }
    }
fail:
    json_decref(obj);
    return NULL;
}

static json_t *parse_array(Reader *r)
{
    json_t *arr = json_array();
    next(r);                                    /* '[' */
    Token *t = peek(r);
    if (!t) {
        parse_fail(r, "premature EOI");
        goto fail;
    }
    if (t->type == TOK_RSQUARE) {
        next(r);
        return arr;
    }
    for (;;) {
        json_t *v = parse_value(r);
        if (!v) {
            parse_fail(r, "expecting value");
            goto fail;
        }
        json_array_append_new(arr, v);
        t = next(r);
        if (!t) {
            parse_fail(r, "premature EOI");
            goto fail;
        }
        if (t->type == TOK_RSQUARE) {
            return arr;
        }
        if (t->type != TOK_COMMA) {
            parse_fail(r, "expected separator in list");
            goto fail;
        }
    }
fail:
    json_decref(arr);
    return NULL;
}

static json_t *parse_value(Reader *r)
{
    Token *t = peek(r);
    if (!t) {
        parse_fail(r, "premature EOI");
        return NULL;
    }
    switch (t->type) {
    case TOK_LCURLY:
        return parse_object(r);
    case TOK_LSQUARE:
        return parse_array(r);
    case TOK_STRING:
        next(r);
        return parse_string(r, t->text);
    case TOK_INTEGER:
    case TOK_FLOAT:
        next(r);
        return parse_number(r, t);
    case TOK_KEYWORD:
        next(r);
        if (!strcmp(t->text, "true")) {
            return json_true();
        } else if (!strcmp(t->text, "false")) {
            return json_false();
        } else if (!strcmp(t->text, "null")) {
            return json_null();
        }
        parse_fail(r, "invalid keyword '%s'", t->text);
        return NULL;
    default:
        parse_fail(r, "expecting value");
        return NULL;
    }
}

/* ---- the splitter: one value per balanced run of tokens ---- */

/*
 * A value (or an error) is complete.  Only one value may come: after the
 * first error or a second value, everything else is ignored.
 */
static void deliver(Reader *r, json_t *value, GError *err)
{
    g_ptr_array_set_size(r->tokens, 0);
    r->token_bytes = 0;
    r->braces = r->brackets = 0;

    if (r->emit) {
        r->emit(r->opaque, value, err);
        return;
    }
    if (r->value) {
        json_decref(r->value);
        r->value = NULL;
        g_set_error(&r->err, STRATA_ERROR, 0,
                    "Expecting at most one JSON value");
    }
    if (r->err) {
        json_decref(value);
        g_clear_error(&err);
        return;
    }
    r->value = value;
    r->err = err;
}

static void parse_pending(Reader *r)
{
    r->pos = 0;
    r->parse_err = NULL;
    json_t *v = parse_value(r);
    if (r->parse_err) {
        json_decref(v);
        v = NULL;
    }
    deliver(r, v, r->parse_err);
}

static void split_token(Reader *r, TokType type, const char *text)
{
    switch (type) {
    case TOK_LCURLY:
        r->braces++;
        break;
    case TOK_RCURLY:
        r->braces--;
        break;
    case TOK_LSQUARE:
        r->brackets++;
        break;
    case TOK_RSQUARE:
        r->brackets--;
        break;
    default:
        break;
    }

    size_t len = strlen(text);
    const char *limit = NULL;
    if (r->token_bytes + len + 1 > MAX_TEXT_BYTES) {
        limit = "JSON token size limit exceeded";
    } else if (r->tokens->len + 1 > MAX_TOKENS) {
        limit = "JSON token count limit exceeded";
    } else if (r->braces + r->brackets > MAX_DEPTH) {
        limit = "JSON nesting depth limit exceeded";
    }
    if (limit) {
        deliver(r, NULL, g_error_new_literal(STRATA_ERROR, 0, limit));
        return;
    }

    Token *t = g_new(Token, 1);
    t->type = type;
    t->text = g_strdup(text);
    g_ptr_array_add(r->tokens, t);
    r->token_bytes += len;

    if ((r->braces > 0 || r->brackets > 0) &&
        r->braces >= 0 && r->brackets >= 0) {
        return;                 /* inside a value still */
    }
    parse_pending(r);
}

static void lex_error(Reader *r)
{
    deliver(r, NULL, g_error_new(STRATA_ERROR, 0,
                                 "JSON parse error, stray '%s'",
                                 r->text->str));
}

/* ---- the lexer ---- */

static bool is_structural(unsigned char c)
{
    return c && strchr("[]{}:,", c);
}

typedef enum {
    STEP_TAKE,      /* ch belongs to the token; go to the new state */
    STEP_EMIT,      /* ch ends the token and belongs to it */
    STEP_END,       /* the token ended before ch: emit, then look at ch again */
    STEP_SKIP,      /* whitespace between tokens */
    STEP_ERROR,     /* ch cannot come here; it is part of the stray text */
} Step;

/*
 * The transition for ch (0 at the end of input).  *state and *type are set
 * for TAKE (new state) and EMIT/END (token type).
 */
static Step lex_step(LexState *state, unsigned char ch, TokType *type)
{
    bool digit = ch >= '0' && ch <= '9';
    bool text_byte = ch >= 0x20 && ch <= 0xFD;

    switch (*state) {
    case L_START:
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
            return STEP_SKIP;
        }
        if (is_structural(ch)) {
            static const TokType st[] = { TOK_LSQUARE, TOK_RSQUARE, TOK_LCURLY,
                                          TOK_RCURLY, TOK_COLON, TOK_COMMA };
            *type = st[strchr("[]{}:,", ch) - "[]{}:,"];
            return STEP_EMIT;
        }
        *state = ch == '"' ? L_DQ : ch == '\'' ? L_SQ : ch == '0' ? L_ZERO :
                 digit ? L_DIGITS : ch == '-' ? L_SIGN :
                 (ch >= 'a' && ch <= 'z') ? L_KEYWORD : L_RECOVER;
        return *state == L_RECOVER ? STEP_ERROR : STEP_TAKE;
    case L_DQ:
    case L_SQ:
        if (!text_byte) {
            return STEP_ERROR;
        }
        if (ch == (*state == L_DQ ? '"' : '\'')) {
            *type = TOK_STRING;
            return STEP_EMIT;
        }
        if (ch == '\\') {
            *state = *state == L_DQ ? L_DQ_ESC : L_SQ_ESC;
        }
        return STEP_TAKE;
    case L_DQ_ESC:
    case L_SQ_ESC:
        /* any printable byte; the parser judges the escape */
        *state = *state == L_DQ_ESC ? L_DQ : L_SQ;
        return text_byte ? STEP_TAKE : STEP_ERROR;
    case L_SIGN:
        *state = ch == '0' ? L_ZERO : L_DIGITS;
        return digit ? STEP_TAKE : STEP_ERROR;
    case L_ZERO:
        if (digit) {
            return STEP_ERROR;
        }
        if (ch == '.') {
            *state = L_POINT;
            return STEP_TAKE;
        }
        *type = TOK_INTEGER;
        return STEP_END;
    case L_DIGITS:
        if (digit) {
            return STEP_TAKE;
        }
        if (ch == '.' || ch == 'e' || ch == 'E') {
            *state = ch == '.' ? L_POINT : L_EXP;
            return STEP_TAKE;
        }
        *type = TOK_INTEGER;
        return STEP_END;
    case L_POINT:
        *state = L_FRACTION;
        return digit ? STEP_TAKE : STEP_ERROR;
    case L_FRACTION:
        if (digit) {
            return STEP_TAKE;
        }
        if (ch == 'e' || ch == 'E') {
            *state = L_EXP;
            return STEP_TAKE;
        }
        *type = TOK_FLOAT;
        return STEP_END;
    case L_EXP:
        if (ch == '+' || ch == '-') {
            *state = L_EXP_SIGN;
            return STEP_TAKE;
        }
        /* fall through */
    case L_EXP_SIGN:
        *state = L_EXP_DIGITS;
        return digit ? STEP_TAKE : STEP_ERROR;
    case L_EXP_DIGITS:
        if (digit) {
            return STEP_TAKE;
        }
        *type = TOK_FLOAT;
        return STEP_END;
    case L_KEYWORD:
        if (ch >= 'a' && ch <= 'z') {
            return STEP_TAKE;
        }
        *type = TOK_KEYWORD;
        return STEP_END;
    case L_RECOVER:
        break;
    }
    return STEP_ERROR;
}

/*
 * After an error, bytes are dropped up to one where a value may start
 * again: a structural character, a control character other than tab, or
 * an impossible UTF-8 byte.
 */
static bool resync_point(unsigned char ch)
{
    return is_structural(ch) || (ch < 0x20 && ch != '\t') || ch >= 0xFE;
}

static void lex_byte(Reader *r, unsigned char ch, bool at_end)
{
    for (;;) {
        if (r->state == L_RECOVER) {
            if (!resync_point(ch) && !at_end) {
                return;
            }
            r->state = L_START;
            if (at_end) {
                return;
            }
            continue;
        }
        if (at_end && r->state == L_START) {
            return;
        }
        LexState st = r->state;
        TokType type = TOK_STRING;
        Step step = lex_step(&st, at_end ? 0 : ch, &type);
        switch (step) {
        case STEP_SKIP:
            return;
        case STEP_TAKE:
            g_string_append_c(r->text, (char)ch);
            r->state = st;
            break;
        case STEP_EMIT:
        case STEP_END:
            if (step == STEP_EMIT) {
                g_string_append_c(r->text, (char)ch);
            }
            split_token(r, type, r->text->str);
            g_string_truncate(r->text, 0);
            r->state = L_START;
            if (step == STEP_END) {
                continue;       /* ch starts the next token */
            }
            return;
        case STEP_ERROR:
            if (!at_end) {
                g_string_append_c(r->text, (char)ch);
            }
            lex_error(r);
            g_string_truncate(r->text, 0);
            r->state = L_RECOVER;
            if (at_end) {
                continue;
            }
            return;
        }
        if (r->text->len > MAX_TEXT_BYTES) {
            /* an endless token is cut and handed over as it is */
            deliver(r, NULL, g_error_new_literal(STRATA_ERROR, 0,
                                      "JSON token size limit exceeded"));
            g_string_truncate(r->text, 0);
            r->state = L_START;
        }
        return;
    }
}

json_t *opts_parse_json(const char *text, GError **errp)
{
    Reader r = {
        .state = L_START,
        .text = g_string_new(NULL),
        .tokens = g_ptr_array_new_with_free_func(token_free),
    };

    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        lex_byte(&r, *p, false);
    }
    lex_byte(&r, 0, true);
    if (r.tokens->len) {
        parse_pending(&r);      /* an unfinished value: the parser says why */
    }
    g_string_free(r.text, TRUE);
    g_ptr_array_free(r.tokens, TRUE);

    if (!r.value && !r.err) {
        g_set_error(&r.err, STRATA_ERROR, 0, "Expecting a JSON value");
    }
    if (r.err) {
        g_propagate_error(errp, r.err);
    }
    return r.value;
}

/* ---- stream mode: QMP input, one value per message ---- */

struct JsonReader {
    Reader r;
};

JsonReader *json_reader_new(JsonReaderEmit *emit, void *opaque)
{
    JsonReader *jr = g_new0(JsonReader, 1);

    jr->r.state = L_START;
    jr->r.text = g_string_new(NULL);
    jr->r.tokens = g_ptr_array_new_with_free_func(token_free);
    jr->r.emit = emit;
    jr->r.opaque = opaque;
    return jr;
}

void json_reader_feed(JsonReader *jr, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    for (size_t i = 0; i < len; i++) {
        lex_byte(&jr->r, p[i], false);
    }
}

void json_reader_free(JsonReader *jr)
{
    if (!jr) {
        return;
    }
    g_string_free(jr->r.text, TRUE);
    g_ptr_array_free(jr->r.tokens, TRUE);
    g_free(jr);
}
