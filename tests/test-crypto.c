/*
 * Crypto units against published known-answer vectors (FIPS-197, IEEE
 * 1619, RFC 6070, FIPS 180-2), and LUKS create/open round trips in memory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "../block/crypto/crypto.h"

static void unhex(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void assert_hex(const uint8_t *got, const char *hex)
{
    size_t n = strlen(hex) / 2;
    uint8_t *want = g_malloc(n);
    unhex(hex, want, n);
    assert_memory_equal(got, want, n);
    g_free(want);
}

static void test_sha256(void **state)
{
    const uint8_t *bufs[2] = { (const uint8_t *)"a", (const uint8_t *)"bc" };
    size_t lens[2] = { 1, 2 };
    uint8_t d[32];

    crypto_hash_bytes(CRYPTO_HASH_SHA256, bufs, lens, 2, d);
    assert_hex(d, "ba7816bf8f01cfea414140de5dae2223"
                  "b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(crypto_hash_digest_len(CRYPTO_HASH_SHA1), 20);
}

static void test_pbkdf2_rfc6070(void **state)
{
    uint8_t out[25];
    static const struct { uint64_t c; size_t n; const char *p, *s, *dk; } v[] = {
        { 1, 20, "password", "salt", "0c60c80f961f0e71f3a9b524af6012062fe037a6" },
        { 2, 20, "password", "salt", "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957" },
        { 4096, 20, "password", "salt",
          "4b007901b765489abead49d926f721d065a429c1" },
        { 4096, 25, "passwordPASSWORDpassword",
          "saltSALTsaltSALTsaltSALTsaltSALTsalt",
          "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
        assert_int_equal(crypto_pbkdf2(CRYPTO_HASH_SHA1,
                                       (const uint8_t *)v[i].p,
                                       strlen(v[i].p),
                                       (const uint8_t *)v[i].s,
                                       strlen(v[i].s), v[i].c, out, v[i].n,
                                       NULL), 0);
        assert_hex(out, v[i].dk);
    }
}

static void test_aes_ecb_fips197(void **state)
{
    uint8_t key[16], buf[16];
    CryptoCipher *c;

    unhex("000102030405060708090a0b0c0d0e0f", key, 16);
    unhex("00112233445566778899aabbccddeeff", buf, 16);
    c = crypto_cipher_new(CRYPTO_CIPHER_AES_128, CRYPTO_MODE_ECB, key, 16,
                          NULL);
    assert_non_null(c);
    assert_int_equal(crypto_cipher_encrypt(c, buf, 16, NULL), 0);
    assert_hex(buf, "69c4e0d86a7b0430d8cdb78070b4c55a");
    assert_int_equal(crypto_cipher_decrypt(c, buf, 16, NULL), 0);
    assert_hex(buf, "00112233445566778899aabbccddeeff");
    crypto_cipher_free(c);
}

/* IEEE 1619-2007 XTS-AES-128 vector 2: the tweak is a plain64 IV. */
static void test_aes_xts_ieee1619(void **state)
{
    uint8_t key[32], buf[32];
    CryptoCipher *c;
    CryptoIVGen *g;

    memset(key, 0x11, 16);
    memset(key + 16, 0x22, 16);
    memset(buf, 0x44, 32);
    c = crypto_cipher_new(CRYPTO_CIPHER_AES_128, CRYPTO_MODE_XTS, key, 32,
                          NULL);
    g = crypto_ivgen_new(CRYPTO_IVGEN_PLAIN64, 0, 0, NULL, 0, NULL);
    assert_non_null(c);
    assert_int_equal(crypto_sectors_encdec(c, g, 16, 32, 0x3333333333ull,
                                           buf, 32, true, NULL), 0);
    assert_hex(buf, "c454185e6a16936e39334038acef838b"
                    "fb186fff7480adc4289382ecd6d394f0");
    assert_int_equal(crypto_sectors_encdec(c, g, 16, 32, 0x3333333333ull,
                                           buf, 32, false, NULL), 0);
    for (int i = 0; i < 32; i++) {
        assert_int_equal(buf[i], 0x44);
    }
    crypto_cipher_free(c);
    crypto_ivgen_free(g);
}

static void test_ivgen(void **state)
{
    uint8_t key[16] = { 1, 2, 3 }, iv[16], want[16] = { 0 }, salt[32];
    const uint8_t *bufs[1] = { key };
    size_t lens[1] = { 16 };
    CryptoIVGen *g;
    CryptoCipher *c;

    g = crypto_ivgen_new(CRYPTO_IVGEN_PLAIN, 0, 0, NULL, 0, NULL);
    crypto_ivgen_calculate(g, 0x1122334455ull, iv, 16, NULL);
    assert_hex(iv, "55443322000000000000000000000000");
    crypto_ivgen_free(g);
    g = crypto_ivgen_new(CRYPTO_IVGEN_PLAIN64, 0, 0, NULL, 0, NULL);
    crypto_ivgen_calculate(g, 0x1122334455ull, iv, 16, NULL);
    assert_hex(iv, "55443322110000000000000000000000");
    crypto_ivgen_free(g);

    /* ESSIV with AES-256 (sized by SHA-256): E(sha256(key), le64(n)). */
    g = crypto_ivgen_new(CRYPTO_IVGEN_ESSIV, CRYPTO_CIPHER_AES_256,
                         CRYPTO_HASH_SHA256, key, 16, NULL);
    assert_non_null(g);
    crypto_ivgen_calculate(g, 7, iv, 16, NULL);
    crypto_hash_bytes(CRYPTO_HASH_SHA256, bufs, lens, 1, salt);
    c = crypto_cipher_new(CRYPTO_CIPHER_AES_256, CRYPTO_MODE_ECB, salt, 32,
                          NULL);
    want[0] = 7;
    crypto_cipher_encrypt(c, want, 16, NULL);
    assert_memory_equal(iv, want, 16);
    crypto_cipher_free(c);
    crypto_ivgen_free(g);
}

static void test_afsplit(void **state)
{
    uint8_t key[32], back[32], *split = g_malloc(32 * 4000);

    crypto_random_bytes(key, sizeof(key));
    crypto_afsplit_encode(CRYPTO_HASH_SHA256, 32, 4000, key, split);
    crypto_afsplit_decode(CRYPTO_HASH_SHA256, 32, 4000, split, back);
    assert_memory_equal(key, back, 32);
    /* Any damaged stripe loses the key. */
    split[100 * 32] ^= 1;
    crypto_afsplit_decode(CRYPTO_HASH_SHA256, 32, 4000, split, back);
    assert_memory_not_equal(key, back, 32);
    g_free(split);
}

/* ---- LUKS in a memory buffer ---- */

static GByteArray *disk;

static const uint8_t *lookup(const char *id, size_t *len)
{
    const char *v = !strcmp(id, "good") ? "s3cret" :
                    !strcmp(id, "bad") ? "wrong" : NULL;
    *len = v ? strlen(v) : 0;
    return (const uint8_t *)v;
}

static int mem_init(void *opaque, uint64_t len, GError **errp)
{
    g_byte_array_set_size(disk, (guint)len);
    memset(disk->data, 0, len);
    return 0;
}

static int mem_write(void *opaque, uint64_t off, const uint8_t *buf,
                     size_t len, GError **errp)
{
    assert_true(off + len <= disk->len);
    memcpy(disk->data + off, buf, len);
    return 0;
}

static int mem_read(void *opaque, uint64_t off, uint8_t *buf, size_t len,
                    GError **errp)
{
    assert_true(off + len <= disk->len);
    memcpy(buf, disk->data + off, len);
    return 0;
}

static void luks_round_trip(const char *alg, const char *mode,
                            const char *ivgen, uint64_t want_payload)
{
    CryptoLuksCreateOpts o = { .key_secret = "good", .cipher_alg = alg,
                               .cipher_mode = mode, .ivgen_alg = ivgen,
                               .iter_time = 1 };
    uint8_t data[2048], copy[2048];
    GError *err = NULL;
    CryptoBlock *b, *r;

    disk = g_byte_array_new();
    crypto_secret_set_lookup(lookup);
    b = crypto_luks_create(&o, NULL, mem_init, mem_write, NULL, &err);
    assert_null(err);
    assert_non_null(b);
    assert_int_equal(crypto_block_payload_offset(b), want_payload);
    assert_true(crypto_luks_has_format(disk->data, disk->len));
    for (size_t i = 0; i < sizeof(data); i++) {
        data[i] = (uint8_t)(i * 7);
    }
    memcpy(copy, data, sizeof(data));
    assert_int_equal(crypto_block_encrypt(b, 4096, data, sizeof(data)), 0);
    assert_memory_not_equal(data, copy, sizeof(data));

    r = crypto_block_open(CRYPTO_FORMAT_LUKS, "good", NULL, 0, mem_read,
                          NULL, &err);
    assert_null(err);
    assert_int_equal(crypto_block_decrypt(r, 4096, data, sizeof(data)), 0);
    assert_memory_equal(data, copy, sizeof(data));
    crypto_block_free(r);

    assert_null(crypto_block_open(CRYPTO_FORMAT_LUKS, "bad", NULL, 0,
                                  mem_read, NULL, &err));
    assert_string_equal(err->message,
                        "Invalid password, cannot unlock any keyslot");
    g_clear_error(&err);
    assert_null(crypto_block_open(CRYPTO_FORMAT_LUKS, NULL, "encrypt.", 0,
                                  mem_read, NULL, &err));
    assert_string_equal(err->message,
                        "Parameter 'encrypt.key-secret' is required for "
                        "cipher");
    g_clear_error(&err);
    /* Without I/O the header is read, no secret needed, no key held. */
    r = crypto_block_open(CRYPTO_FORMAT_LUKS, NULL, NULL, CRYPTO_OPEN_NO_IO,
                          mem_read, NULL, &err);
    assert_non_null(r);
    assert_false(crypto_block_has_key(r));
    crypto_block_free(r);
    crypto_block_free(b);
    g_byte_array_free(disk, TRUE);
}

static void test_luks_default(void **state)
{
    /* QEMU's layout: 8 slots of 504 sectors after 8 header sectors. */
    luks_round_trip(NULL, NULL, NULL, 2068480);
}

static void test_luks_cbc_essiv(void **state)
{
    luks_round_trip("aes-128", "cbc", "essiv", 4096 + 8 * 128 * 512);
}

static void test_luks_twofish_plain(void **state)
{
    luks_round_trip("twofish-128", "cbc", "plain", 4096 + 8 * 128 * 512);
}

static void test_luks_bad_header(void **state)
{
    CryptoLuksCreateOpts o = { .key_secret = "good", .iter_time = 1 };
    GError *err = NULL;
    CryptoBlock *b;

    disk = g_byte_array_new();
    crypto_secret_set_lookup(lookup);
    b = crypto_luks_create(&o, NULL, mem_init, mem_write, NULL, &err);
    crypto_block_free(b);
    disk->data[208 + 44 + 3] ^= 1;   /* slot 0 stripes */
    assert_null(crypto_block_open(CRYPTO_FORMAT_LUKS, "good", NULL, 0,
                                  mem_read, NULL, &err));
    assert_string_equal(err->message,
                        "Keyslot 0 is corrupted (stripes 4001 != 4000)");
    g_clear_error(&err);
    disk->data[0] = 'X';
    assert_null(crypto_block_open(CRYPTO_FORMAT_LUKS, "good", NULL, 0,
                                  mem_read, NULL, &err));
    assert_string_equal(err->message, "Volume is not in LUKS format");
    g_clear_error(&err);
    g_byte_array_free(disk, TRUE);
}

/* qcow2's legacy scheme: AES-128-CBC keyed by the padded passphrase. */
static void test_qcow_aes(void **state)
{
    uint8_t key[16] = "s3cret", buf[512], ref[512], iv[16] = { 3 };
    CryptoBlock *b;
    CryptoCipher *c;

    crypto_secret_set_lookup(lookup);
    b = crypto_qcow_create("good", NULL, NULL);
    assert_non_null(b);
    memset(buf, 0x5a, sizeof(buf));
    memcpy(ref, buf, sizeof(ref));
    assert_int_equal(crypto_block_encrypt(b, 3 * 512, buf, 512), 0);
    c = crypto_cipher_new(CRYPTO_CIPHER_AES_128, CRYPTO_MODE_CBC, key, 16,
                          NULL);
    crypto_cipher_setiv(c, iv, 16, NULL);
    crypto_cipher_encrypt(c, ref, 512, NULL);
    assert_memory_equal(buf, ref, 512);
    crypto_cipher_free(c);
    crypto_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_pbkdf2_rfc6070),
        cmocka_unit_test(test_aes_ecb_fips197),
        cmocka_unit_test(test_aes_xts_ieee1619),
        cmocka_unit_test(test_ivgen),
        cmocka_unit_test(test_afsplit),
        cmocka_unit_test(test_luks_default),
        cmocka_unit_test(test_luks_cbc_essiv),
        cmocka_unit_test(test_luks_twofish_plain),
        cmocka_unit_test(test_luks_bad_header),
        cmocka_unit_test(test_qcow_aes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
