/*
 * Key slot management on an open LUKS volume (qemu-img amend): add a
 * passphrase to a slot, or erase slots.  Erasing overwrites the slot's key
 * material with random data many times, so that an old copy of the header
 * no longer unlocks anything.  Refusals (the last active slot, an active
 * slot without --force) are QEMU's, with its messages.
 */
#include <errno.h>
#include <string.h>
#include "strata/error.h"
#include "crypto-int.h"

enum { ERASE_ITERATIONS = 40 };

static int count_active(const CryptoBlock *b)
{
    int n = 0;

    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        n += b->hdr.slots[i].active == SLOT_ENABLED;
    }
    return n;
}

static void free_secret(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        g_free(s);
    }
}

/* The header first (the slot is dead at once), then the key material. */
static int erase_slot(CryptoBlock *b, int idx, CryptoWriteFunc writefn,
                      void *opaque, GError **errp)
{
    LuksSlot *slot = &b->hdr.slots[idx];
    size_t len = (size_t)b->hdr.master_key_len * slot->stripes;
    uint8_t *garbage = g_malloc0(len);
    GError *err = NULL;
    int ret;

    memset(slot->salt, 0, sizeof(slot->salt));
    slot->iterations = 0;
    slot->active = SLOT_DISABLED;
    ret = luks_write_header(b, writefn, opaque, &err);
    for (int i = 0; i < ERASE_ITERATIONS; i++) {
        crypto_random_bytes(garbage, len);
        if (writefn(opaque, (uint64_t)slot->key_offset_sector *
                    LUKS_SECTOR_SIZE, garbage, len,
                    err ? NULL : &err) < 0) {
            ret = -1;
            break;
        }
    }
    g_free(garbage);
    if (err) {
        g_propagate_error(errp, err);
    }
    return ret;
}

static int add_keyslot(CryptoBlock *b, const CryptoLuksAmendOpts *o,
                       bool force, CryptoReadFunc readfn,
                       CryptoWriteFunc writefn, void *opaque, GError **errp)
{
    int64_t iter_time = o->iter_time >= 0 ? o->iter_time
                                          : DEFAULT_ITER_TIME_MS;
    char *old_pw = NULL, *new_pw = NULL;
    uint8_t *masterkey = NULL;
    int slot = -1, ret = -1;

    if (!o->new_secret) {
        error_setg(errp, "'new-secret' is required to activate a keyslot");
        return -1;
    }
    if (o->old_secret) {
        error_setg(errp, "'old-secret' must not be given when activating "
                   "keyslots");
        return -1;
    }
    if (o->has_keyslot) {
        if (o->keyslot < 0 || o->keyslot >= LUKS_NUM_SLOTS) {
            error_setg(errp, "Invalid keyslot %u specified, must be between "
                       "0 and %u", (unsigned)o->keyslot, LUKS_NUM_SLOTS - 1);
            return -1;
        }
        slot = (int)o->keyslot;
    } else {
        for (int i = 0; i < LUKS_NUM_SLOTS && slot < 0; i++) {
            if (b->hdr.slots[i].active != SLOT_ENABLED) {
                slot = i;
            }
        }
        if (slot < 0) {
            error_setg(errp, "Can't add a keyslot - all keyslots are in use");
            return -1;
        }
    }
    if (!force && b->hdr.slots[slot].active == SLOT_ENABLED) {
        error_setg(errp, "Refusing to overwrite active keyslot %i - please "
                   "erase it first", slot);
        return -1;
    }
    old_pw = crypto_secret_lookup_utf8(b->secret_id ? b->secret_id : "",
                                       errp);
    if (!old_pw) {
        return -1;
    }
    masterkey = g_malloc0(b->hdr.master_key_len);
    for (int i = 0, found = 0; i < LUKS_NUM_SLOTS && !found; i++) {
        found = luks_load_key(b, i, old_pw, masterkey, readfn, opaque, errp);
        if (found < 0) {
            goto out;
        }
        if (!found && i == LUKS_NUM_SLOTS - 1) {
            error_setg(errp, "Invalid password, cannot unlock any keyslot");
            goto out;
        }
    }
    new_pw = crypto_secret_lookup_utf8(o->new_secret, errp);
    if (!new_pw) {
        goto out;
    }
    ret = luks_store_key(b, slot, new_pw, masterkey, iter_time, writefn,
                         opaque, errp);
out:
    if (masterkey) {
        memset(masterkey, 0, b->hdr.master_key_len);
        g_free(masterkey);
    }
    free_secret(old_pw);
    free_secret(new_pw);
    return ret;
}

static int erase_keyslots(CryptoBlock *b, const CryptoLuksAmendOpts *o,
                          bool force, CryptoReadFunc readfn,
                          CryptoWriteFunc writefn, void *opaque,
                          GError **errp)
{
    char *old_pw = NULL;
    uint8_t *tmpkey = NULL;
    bool match[LUKS_NUM_SLOTS] = { false };
    int nmatch = 0, ret = -1;

    if (o->new_secret) {
        error_setg(errp, "'new-secret' must not be given when erasing "
                   "keyslots");
        return -1;
    }
    if (o->iter_time >= 0) {
        error_setg(errp, "'iter-time' must not be given when erasing "
                   "keyslots");
        return -1;
    }
    if (o->old_secret) {
        old_pw = crypto_secret_lookup_utf8(o->old_secret, errp);
        if (!old_pw) {
            return -1;
        }
        tmpkey = g_malloc0(b->hdr.master_key_len);
    }
    if (o->has_keyslot) {
        int slot = (int)o->keyslot;

        if (o->keyslot < 0 || o->keyslot >= LUKS_NUM_SLOTS) {
            error_setg(errp, "Invalid keyslot %i specified, must be between "
                       "0 and %i", slot, LUKS_NUM_SLOTS - 1);
            goto out;
        }
        if (old_pw) {
            int rv = luks_load_key(b, slot, old_pw, tmpkey, readfn, opaque,
                                   errp);
            if (rv < 0) {
                goto out;
            } else if (rv == 0) {
                error_setg(errp, "Given keyslot %i doesn't contain the given "
                           "old password for erase operation", slot);
                goto out;
            }
        }
        if (!force && b->hdr.slots[slot].active != SLOT_ENABLED) {
            error_setg(errp, "Given keyslot %i is already erased (inactive) ",
                       slot);
            goto out;
        }
        if (!force && count_active(b) == 1) {
            error_setg(errp, "Attempt to erase the only active keyslot %i "
                       "which will erase all the data in the image "
                       "irreversibly - refusing operation", slot);
            goto out;
        }
        ret = erase_slot(b, slot, writefn, opaque, errp);
    } else if (old_pw) {
        for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
            int rv = luks_load_key(b, i, old_pw, tmpkey, readfn, opaque, errp);
            if (rv < 0) {
                goto out;
            }
            match[i] = rv == 1;
            nmatch += rv == 1;
        }
        if (nmatch == 0) {
            error_setg(errp, "No keyslots match given (old) password for "
                       "erase operation");
            goto out;
        }
        if (!force && nmatch == count_active(b)) {
            error_setg(errp, "All the active keyslots match the (old) "
                       "password that was given and erasing them will erase "
                       "all the data in the image irreversibly - refusing "
                       "operation");
            goto out;
        }
        ret = 0;
        for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
            if (match[i]) {
                ret = erase_slot(b, i, writefn, opaque, errp);
            }
        }
    } else {
        error_setg(errp, "To erase keyslot(s), either explicit keyslot index "
                   "or the password currently contained in them must be "
                   "given");
    }
out:
    if (tmpkey) {
        memset(tmpkey, 0, b->hdr.master_key_len);
        g_free(tmpkey);
    }
    free_secret(old_pw);
    return ret;
}

static json_t *get(json_t *options, const char *prefix, const char *key)
{
    char *full = g_strconcat(prefix, key, NULL);
    json_t *v = json_object_get(options, full);

    g_free(full);
    return v;
}

void crypto_luks_amend_opts_parse(json_t *options, const char *prefix,
                                  CryptoLuksAmendOpts *o)
{
    json_t *v;

    memset(o, 0, sizeof(*o));
    o->state = json_string_value(get(options, prefix, "state"));
    o->new_secret = json_string_value(get(options, prefix, "new-secret"));
    o->old_secret = json_string_value(get(options, prefix, "old-secret"));
    v = get(options, prefix, "keyslot");
    o->has_keyslot = v != NULL;
    /* Past INT64_MAX (text) is out of range all the same. */
    o->keyslot = json_is_integer(v) ? json_integer_value(v) : -1;
    v = get(options, prefix, "iter-time");
    o->iter_time = v ? (json_is_integer(v) ? json_integer_value(v) : 0) : -1;
}

int crypto_luks_amend(CryptoBlock *b, const CryptoLuksAmendOpts *o,
                      bool force, CryptoReadFunc readfn,
                      CryptoWriteFunc writefn, void *opaque, GError **errp)
{
    if (b->format != CRYPTO_FORMAT_LUKS) {
        error_setg(errp, "Crypto format qcow doesn't support format options "
                   "amendment");
        return -1;
    }
    if (!o->state) {
        error_setg(errp, "Parameter 'state' is missing");
        return -1;
    }
    if (!strcmp(o->state, "active")) {
        return add_keyslot(b, o, force, readfn, writefn, opaque, errp);
    }
    if (!strcmp(o->state, "inactive")) {
        return erase_keyslots(b, o, force, readfn, writefn, opaque, errp);
    }
    error_setg(errp, "Parameter 'state' does not accept value '%s'",
               o->state);
    return -1;
}
