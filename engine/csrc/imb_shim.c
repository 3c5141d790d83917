/*
 * Thin C shim over Intel ipsec-mb (intel-ipsec-mb.h, v1.x): the library's API is an IMB_MGR of
 * function pointers reached through macros, so this file turns the few calls the ESP engine
 * needs into plain functions that Rust declares `extern "C"` (engine/src/crypto/imb.rs).
 *
 * Contract: every pointer is non-NULL and sized as documented on the Rust side; one IMB_MGR is
 * used by one thread at a time; key structures are allocated here (64-byte aligned) and wiped
 * with explicit_bzero before they are freed.
 */
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <intel-ipsec-mb.h>

/* sse = 0: the library's pick for this CPU (init_mb_mgr_auto); 1: the SSE manager, which
 * uses the SHA extensions when the CPU has them (the library's SSE "type 2"). */
void *espd_imb_mgr_new(int sse)
{
    IMB_MGR *m = alloc_mb_mgr(0);
    if (m == NULL)
        return NULL;
    if (sse)
        init_mb_mgr_sse(m);
    else
        init_mb_mgr_auto(m, NULL);
    if (imb_get_errno(m) != 0) {
        free_mb_mgr(m);
        return NULL;
    }
    return m;
}

/* The CPU features the manager detected (IMB_FEATURE_*). */
uint64_t espd_imb_mgr_features(void *m) { return ((IMB_MGR *)m)->features; }

void espd_imb_mgr_free(void *m) { free_mb_mgr((IMB_MGR *)m); }

/* The architecture the manager picked (IMB_ARCH_*: 1 none, 2 SSE, 3 AVX, 4 AVX2, 5 AVX512). */
int espd_imb_mgr_arch(void *m) { return (int)((IMB_MGR *)m)->used_arch; }

const char *espd_imb_version(void) { return imb_get_version_str(); }

static void *alloc_wiped(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n) != 0)
        return NULL;
    memset(p, 0, n);
    return p;
}

/* --- AES-GCM (direct API) ------------------------------------------------------------ */

void *espd_imb_gcm_key_new(void *mgr, const uint8_t *key, int key_len)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    struct gcm_key_data *k = alloc_wiped(sizeof(*k));
    if (k == NULL)
        return NULL;
    if (key_len == 16)
        IMB_AES128_GCM_PRE(m, key, k);
    else if (key_len == 32)
        IMB_AES256_GCM_PRE(m, key, k);
    else {
        free(k);
        return NULL;
    }
    return k;
}

void espd_imb_gcm_key_free(void *k)
{
    if (k == NULL)
        return;
    explicit_bzero(k, sizeof(struct gcm_key_data));
    free(k);
}

/* In place: buf[0..len) is encrypted; tag receives 16 bytes. iv is the 12-byte nonce. */
void espd_imb_gcm_seal(void *mgr, const void *k, int key_len, uint8_t *buf, uint64_t len,
                       const uint8_t *iv, const uint8_t *aad, uint64_t aad_len, uint8_t *tag)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    struct gcm_context_data ctx;
    if (key_len == 16)
        IMB_AES128_GCM_ENC(m, k, &ctx, buf, buf, len, iv, aad, aad_len, tag, 16);
    else
        IMB_AES256_GCM_ENC(m, k, &ctx, buf, buf, len, iv, aad, aad_len, tag, 16);
    explicit_bzero(&ctx, sizeof(ctx));
}

/* In place decrypt; tag receives the computed 16-byte tag (the caller compares). */
void espd_imb_gcm_open(void *mgr, const void *k, int key_len, uint8_t *buf, uint64_t len,
                       const uint8_t *iv, const uint8_t *aad, uint64_t aad_len, uint8_t *tag)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    struct gcm_context_data ctx;
    if (key_len == 16)
        IMB_AES128_GCM_DEC(m, k, &ctx, buf, buf, len, iv, aad, aad_len, tag, 16);
    else
        IMB_AES256_GCM_DEC(m, k, &ctx, buf, buf, len, iv, aad, aad_len, tag, 16);
    explicit_bzero(&ctx, sizeof(ctx));
}

/* --- AES-CBC + HMAC-SHA1/SHA2 (job API, multi-buffer) -------------------------------- */

struct espd_cbc_key {
    uint8_t enc[16 * 15];
    uint8_t dec[16 * 15];
    uint8_t ipad[64];
    uint8_t opad[64];
    int aes_len;
    int hash_alg; /* 1 sha1, 256, 384, 512 */
};

/* Returns NULL for an unsupported length or algorithm. The HMAC key must not be longer than
 * the hash block (ESP keys never are: RFC 2404 20 bytes, RFC 4868 32/48/64 bytes). */
void *espd_imb_cbc_key_new(void *mgr, const uint8_t *aes_key, int aes_len, int hash_alg,
                           const uint8_t *mac_key, int mac_len)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    int block = (hash_alg == 384 || hash_alg == 512) ? 128 : 64;
    uint8_t pad[128];
    struct espd_cbc_key *k;
    int i;

    if ((aes_len != 16 && aes_len != 32) || mac_len > block || mac_len < 0)
        return NULL;
    if (hash_alg != 1 && hash_alg != 256 && hash_alg != 384 && hash_alg != 512)
        return NULL;
    k = alloc_wiped(sizeof(*k));
    if (k == NULL)
        return NULL;
    k->aes_len = aes_len;
    k->hash_alg = hash_alg;
    if (aes_len == 16)
        IMB_AES_KEYEXP_128(m, aes_key, k->enc, k->dec);
    else
        IMB_AES_KEYEXP_256(m, aes_key, k->enc, k->dec);

    for (int round = 0; round < 2; round++) {
        uint8_t x = round == 0 ? 0x36 : 0x5c;
        uint8_t *out = round == 0 ? k->ipad : k->opad;
        memset(pad, x, sizeof(pad));
        for (i = 0; i < mac_len; i++)
            pad[i] = mac_key[i] ^ x;
        switch (hash_alg) {
        case 1: IMB_SHA1_ONE_BLOCK(m, pad, out); break;
        case 256: IMB_SHA256_ONE_BLOCK(m, pad, out); break;
        case 384: IMB_SHA384_ONE_BLOCK(m, pad, out); break;
        default: IMB_SHA512_ONE_BLOCK(m, pad, out); break;
        }
    }
    explicit_bzero(pad, sizeof(pad));
    return k;
}

void espd_imb_cbc_key_free(void *k)
{
    if (k == NULL)
        return;
    explicit_bzero(k, sizeof(struct espd_cbc_key));
    free(k);
}

/* One ESP packet for the multi-buffer job manager.
 * buf: the ESP packet from the SPI; cipher_off/cipher_len: the CBC region (IV at cipher_off-16);
 * hash_len: bytes hashed from buf[0] (ESP header, IV, ciphertext, and seq-hi for ESN);
 * tag: where the truncated ICV is written; status: 0 on success. */
struct espd_cbc_op {
    uint8_t *buf;
    uint64_t cipher_off;
    uint64_t cipher_len;
    uint64_t hash_len;
    uint8_t *tag;
    uint64_t tag_len;
    int32_t status;
    int32_t _pad;
};

static IMB_HASH_ALG hash_of(int a)
{
    switch (a) {
    case 1: return IMB_AUTH_HMAC_SHA_1;
    case 256: return IMB_AUTH_HMAC_SHA_256;
    case 384: return IMB_AUTH_HMAC_SHA_384;
    default: return IMB_AUTH_HMAC_SHA_512;
    }
}

static void record(IMB_JOB *j)
{
    struct espd_cbc_op *op = (struct espd_cbc_op *)j->user_data;
    op->status = j->status == IMB_STATUS_COMPLETED ? 0 : (int32_t)j->status + 100;
}

/* The AES encryption key schedule (11 or 15 round keys of 16 bytes, FIPS 197 order). */
const uint8_t *espd_imb_cbc_enc_keys(const void *key)
{
    return ((const struct espd_cbc_key *)key)->enc;
}

/* Encrypts (CBC then HMAC) or decrypts (HMAC then CBC) a burst of packets of one SA; with
 * hash == 0 only the cipher runs (the caller computes the ICVs).
 * Returns the number of jobs that completed successfully. */
int espd_imb_cbc_burst(void *mgr, const void *key, int encrypt, int hash, struct espd_cbc_op *ops,
                       int n)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    const struct espd_cbc_key *k = (const struct espd_cbc_key *)key;
    IMB_JOB *j;
    int ok = 0;

    for (int i = 0; i < n; i++) {
        struct espd_cbc_op *op = &ops[i];
        op->status = -1;
        j = IMB_GET_NEXT_JOB(m);
        j->cipher_mode = IMB_CIPHER_CBC;
        j->cipher_direction = encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
        j->chain_order = encrypt ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
        j->hash_alg = hash ? hash_of(k->hash_alg) : IMB_AUTH_NULL;
        j->enc_keys = k->enc;
        j->dec_keys = k->dec;
        j->key_len_in_bytes = (uint64_t)k->aes_len;
        j->src = op->buf;
        j->dst = op->buf + op->cipher_off;
        j->cipher_start_src_offset_in_bytes = op->cipher_off;
        j->msg_len_to_cipher_in_bytes = op->cipher_len;
        j->iv = op->buf + op->cipher_off - 16;
        j->iv_len_in_bytes = 16;
        j->hash_start_src_offset_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = op->hash_len;
        j->auth_tag_output = op->tag;
        j->auth_tag_output_len_in_bytes = op->tag_len;
        j->u.HMAC._hashed_auth_key_xor_ipad = k->ipad;
        j->u.HMAC._hashed_auth_key_xor_opad = k->opad;
        j->user_data = op;
        j = IMB_SUBMIT_JOB(m);
        while (j != NULL) {
            record(j);
            j = IMB_GET_COMPLETED_JOB(m);
        }
    }
    while ((j = IMB_FLUSH_JOB(m)) != NULL) {
        record(j);
    }
    for (int i = 0; i < n; i++)
        ok += ops[i].status == 0;
    return ok;
}

/* HMAC only (no cipher) over data[0..len) with the SA's precomputed pads; for known-answer
 * tests of the precomputation. Returns 0 on success. */
int espd_imb_hmac(void *mgr, const void *key, const uint8_t *data, uint64_t len, uint8_t *tag,
                  uint64_t tag_len)
{
    IMB_MGR *m = (IMB_MGR *)mgr;
    const struct espd_cbc_key *k = (const struct espd_cbc_key *)key;
    IMB_JOB *j = IMB_GET_NEXT_JOB(m);
    int rc = -1;
    j->cipher_mode = IMB_CIPHER_NULL;
    j->cipher_direction = IMB_DIR_ENCRYPT;
    j->chain_order = IMB_ORDER_HASH_CIPHER;
    j->hash_alg = hash_of(k->hash_alg);
    j->src = data;
    j->dst = NULL;
    j->cipher_start_src_offset_in_bytes = 0;
    j->msg_len_to_cipher_in_bytes = 0;
    j->iv = NULL;
    j->iv_len_in_bytes = 0;
    j->key_len_in_bytes = 0;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = len;
    j->auth_tag_output = tag;
    j->auth_tag_output_len_in_bytes = tag_len;
    j->u.HMAC._hashed_auth_key_xor_ipad = k->ipad;
    j->u.HMAC._hashed_auth_key_xor_opad = k->opad;
    j->user_data = NULL;
    j = IMB_SUBMIT_JOB(m);
    if (j == NULL)
        j = IMB_FLUSH_JOB(m);
    while (j != NULL) {
        rc = j->status == IMB_STATUS_COMPLETED ? 0 : -1;
        j = IMB_FLUSH_JOB(m);
    }
    return rc;
}
