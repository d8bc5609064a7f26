/* Size parsing and printing with QEMU's conventions. */
#include <errno.h>
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "strata/units.h"

int parse_uint64(const char *str, uint64_t *out)
{
    if (!str || !*str || *str == '-') {
        return -EINVAL;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(str, &end, 0);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (end == str || *end) {
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int parse_int64(const char *str, int64_t *out)
{
    if (!str || !*str) {
        return -EINVAL;
    }
    char *end;
    errno = 0;
    long long v = strtoll(str, &end, 0);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (end == str || *end) {
        return -EINVAL;
    }
    *out = v;
    return 0;
}

static int suffix_shift(unsigned char c)
{
    switch (c) {
    case 'b': case 'B': return 0;
    case 'k': case 'K': return 10;
    case 'm': case 'M': return 20;
    case 'g': case 'G': return 30;
    case 't': case 'T': return 40;
    case 'p': case 'P': return 50;
    case 'e': case 'E': return 60;
    default: return -1;
    }
}

/* strtoull with QEMU's error rules: no digits -> EINVAL, overflow -> ERANGE. */
static int strtou64_checked(const char *s, const char **end, int base,
                            uint64_t *out)
{
    char *ep;

    errno = 0;
    unsigned long long v = strtoull(s, &ep, base);
    *end = ep;
    if (ep == s) {
        return -EINVAL;
    }
    if (errno == ERANGE) {
        return -ERANGE;
    }
    *out = v;
    return 0;
}

int strtosz(const char *nptr, const char **end, uint64_t *result,
            bool *hex_suffix)
{
    const char *endptr = nptr;
    uint64_t val = 0, valf = 0;
    bool hex = false;
    int shift;
    int ret;

    ret = strtou64_checked(nptr, &endptr, 10, &val);
    if (ret) {
        goto out;
    }
    if (memchr(nptr, '-', endptr - nptr)) {
        endptr = nptr;
        ret = -EINVAL;
        goto out;
    }
    if (val == 0 && (*endptr == 'x' || *endptr == 'X')) {
        /* Looks like hex: reparse, a fraction is not allowed. */
        ret = strtou64_checked(nptr, &endptr, 16, &val);
        if (ret) {
            goto out;
        }
        if (*endptr == '.') {
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        }
        hex = true;
    } else if (*endptr == '.') {
        const char *f = endptr;
        char *fend;
        double fraction;

        errno = 0;
        fraction = strtod(f, &fend);
        if (fend == f || errno == ERANGE || !isfinite(fraction)) {
            /* "1." or "1.k": skip the lone dot. */
            endptr = f + 1;
        } else if (memchr(f, 'e', fend - f) || memchr(f, 'E', fend - f)) {
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        } else {
            endptr = fend;
            /*
             * A 64-bit fixed-point fraction.  ".999..." rounds to 1.0 in a
             * double, which QEMU's conversion turns into 0: keep that.
             */
            valf = fraction >= 1.0 ? 0 : (uint64_t)(fraction * 0x1p64);
        }
    }

    shift = suffix_shift((unsigned char)*endptr);
    if (shift >= 0) {
        if (hex && hex_suffix) {
            *hex_suffix = true;
        }
        endptr++;
    } else {
        shift = 0;
    }
    if (shift == 0) {
        /* A fraction needs a unit to scale it. */
        if (valf != 0) {
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        }
    } else {
        unsigned __int128 mul = (unsigned __int128)1 << shift;
        unsigned __int128 whole = (unsigned __int128)val * mul;
        unsigned __int128 part = (unsigned __int128)valf * mul;
        /* part is 64.64 fixed point: add its integer part, round 0.5 up. */
        whole += part >> 64;
        whole += ((uint64_t)part) >> 63;
        if (whole >> 64) {
            ret = -ERANGE;
            goto out;
        }
        val = (uint64_t)whole;
    }
    ret = 0;
out:
    if (end) {
        *end = endptr;
    } else if (*endptr) {
        ret = -EINVAL;
    }
    if (ret == 0) {
        *result = val;
    }
    return ret;
}

int parse_size(const char *str, char default_suffix, uint64_t *out)
{
    const char *end;
    uint64_t val;
    if (!str) {
        return -EINVAL;
    }
    int ret = strtosz(str, &end, &val, NULL);
    if (ret < 0) {
        return ret;
    }
    if (*end) {
        return -EINVAL;
    }
    /* Without a suffix the number is in units of default_suffix. */
    const char *last = end - 1;
    if (end > str && !g_ascii_isalpha(*last)) {
        int shift = suffix_shift((unsigned char)default_suffix);
        if (shift > 0) {
            if (val > (UINT64_MAX >> shift)) {
                return -ERANGE;
            }
            val <<= shift;
        }
    }
    *out = val;
    return 0;
}

char *size_to_str(uint64_t val)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    /*
     * Pick the unit so that the number printed is below 1000 (not 1024):
     * 1000 bytes prints as "0.977 KiB", which is what QEMU's tools print and
     * what scripts compare against.
     */
    int exp;
    frexp((double)val / (1000.0 / 1024.0), &exp);
    int i = exp > 0 ? (exp - 1) / 10 : 0;
    if (i > 6) {
        i = 6;
    }
    double div = (double)(1ULL << (i * 10));
    return g_strdup_printf("%0.3g %sB", (double)val / div, suffixes[i]);
}
