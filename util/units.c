/* Size parsing and printing with QEMU's conventions. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "strata/units.h"

static int suffix_shift(char c)
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

int parse_size(const char *str, char default_suffix, uint64_t *out)
{
    if (!str) {
        return -EINVAL;
    }
    while (g_ascii_isspace(*str)) {
        str++;
    }
    if (!g_ascii_isdigit(*str) && *str != '.') {
        return -EINVAL;
    }
    /* Integers are parsed exactly; decimals only make sense with a unit. */
    char *end;
    errno = 0;
    unsigned long long ival = strtoull(str, &end, 10);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    double frac = 0;
    if (*end == '.') {
        char *fend;
        double d = strtod(end, &fend);
        if (fend == end + 1) {
            return -EINVAL;
        }
        frac = d;
        end = fend;
    }
    int shift;
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0 || end[1]) {
            return -EINVAL;
        }
    } else {
        shift = suffix_shift(default_suffix);
        if (shift < 0) {
            shift = 0;
        }
    }
    if (frac != 0 && shift == 0) {
        return -EINVAL;
    }
    if (shift && ival > (UINT64_MAX >> shift)) {
        return -ERANGE;
    }
    uint64_t val = (uint64_t)ival << shift;
    if (frac != 0) {
        double extra = frac * (double)(1ULL << shift);
        if ((double)val + extra >= 18446744073709551616.0) {
            return -ERANGE;
        }
        val += (uint64_t)extra;
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
