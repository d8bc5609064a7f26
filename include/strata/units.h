/* Sizes: parsing "64k"/"1.5M" and printing "64 KiB" the way QEMU does. */
#ifndef STRATA_UNITS_H
#define STRATA_UNITS_H

#include <stdbool.h>
#include <stdint.h>

#define KiB (1ULL << 10)
#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TiB (1ULL << 40)

/* Round n to a multiple of m (m need not be a power of two). */
#define ROUND_DOWN(n, m) ((n) / (m) * (m))
#define ROUND_UP(n, m) ROUND_DOWN((n) + (m) - 1, (m))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

/*
 * Parse a size with an optional suffix (b, k/K, M, G, T, P, E; default unit
 * given by default_suffix, e.g. 'B' for bytes).  Accepts decimals ("1.5M").
 * Returns 0 and sets *out, or -EINVAL (not a number / trailing junk) or
 * -ERANGE (too large).
 */
int parse_size(const char *str, char default_suffix, uint64_t *out);
/*
 * QEMU's size syntax exactly (qemu_strtosz): decimal with an optional
 * fraction, or 0x hex; one suffix letter; rounding half up.  *end (if end is
 * non-NULL) is where parsing stopped, otherwise trailing text is -EINVAL.
 * *hex_suffix (optional) is set when a hex number carried a suffix, which
 * QEMU accepts with a deprecation warning.
 */
int strtosz(const char *nptr, const char **end, uint64_t *result,
            bool *hex_suffix);
/* Strict integer parse (decimal, 0x hex, 0 octal): 0, -EINVAL or -ERANGE. */
int parse_int64(const char *str, int64_t *out);
int parse_uint64(const char *str, uint64_t *out);

/* "64 KiB", "1.5 MiB": QEMU's size_to_str().  Caller frees. */
char *size_to_str(uint64_t val);

#endif
