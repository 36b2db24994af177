/* A narrow C face on libvpx's VP8 encoder and decoder for keyline-media.
 *
 * libvpx's structs (configuration, images, packets) stay on this side:
 * the Rust side sees opaque handles and plain byte buffers, so it never
 * depends on the layout of a particular libvpx version. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include <vpx/vp8cx.h>
#include <vpx/vp8dx.h>
#include <vpx/vpx_decoder.h>
#include <vpx/vpx_encoder.h>

struct kl_enc {
    vpx_codec_ctx_t ctx;
    vpx_codec_enc_cfg_t cfg;
    vpx_image_t img;
    unsigned w, h;
};

struct kl_dec {
    vpx_codec_ctx_t ctx;
    vpx_image_t *img;
};

static void set_err(char *err, size_t errlen, const char *what, vpx_codec_ctx_t *ctx) {
    if (!err || !errlen) return;
    const char *detail = ctx ? vpx_codec_error_detail(ctx) : NULL;
    snprintf(err, errlen, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

struct kl_enc *kl_vp8_enc_new(unsigned w, unsigned h, unsigned fps, unsigned kbps,
                              unsigned threads, char *err, size_t errlen) {
    if (w == 0 || h == 0 || (w & 1) || (h & 1) || fps == 0 || kbps == 0) {
        set_err(err, errlen, "bad encoder parameters", NULL);
        return NULL;
    }
    struct kl_enc *e = calloc(1, sizeof *e);
    if (!e) { set_err(err, errlen, "out of memory", NULL); return NULL; }
    vpx_codec_iface_t *cx = vpx_codec_vp8_cx();
    if (vpx_codec_enc_config_default(cx, &e->cfg, 0) != VPX_CODEC_OK) {
        set_err(err, errlen, "no default VP8 encoder configuration", NULL);
        free(e);
        return NULL;
    }
    e->w = w;
    e->h = h;
    e->cfg.g_w = w;
    e->cfg.g_h = h;
    /* Timestamps are RTP's 90 kHz clock. */
    e->cfg.g_timebase.num = 1;
    e->cfg.g_timebase.den = 90000;
    e->cfg.g_threads = threads;
    e->cfg.g_lag_in_frames = 0;
    e->cfg.g_error_resilient = VPX_ERROR_RESILIENT_DEFAULT;
    e->cfg.g_pass = VPX_RC_ONE_PASS;
    e->cfg.rc_end_usage = VPX_CBR;
    e->cfg.rc_target_bitrate = kbps;
    e->cfg.rc_min_quantizer = 4;
    e->cfg.rc_max_quantizer = 63;
    e->cfg.rc_undershoot_pct = 50;
    e->cfg.rc_overshoot_pct = 50;
    e->cfg.rc_buf_initial_sz = 500;
    e->cfg.rc_buf_optimal_sz = 600;
    e->cfg.rc_buf_sz = 1000;
    e->cfg.rc_dropframe_thresh = 0;
    /* Key frames come on request (a receiver that lost one asks). */
    e->cfg.kf_mode = VPX_KF_AUTO;
    e->cfg.kf_max_dist = fps * 10;
    if (vpx_codec_enc_init(&e->ctx, cx, &e->cfg, 0) != VPX_CODEC_OK) {
        set_err(err, errlen, "cannot start the VP8 encoder", &e->ctx);
        free(e);
        return NULL;
    }
    vpx_codec_control(&e->ctx, VP8E_SET_CPUUSED, -8);
    vpx_codec_control(&e->ctx, VP8E_SET_STATIC_THRESHOLD, 1);
    vpx_codec_control(&e->ctx, VP8E_SET_MAX_INTRA_BITRATE_PCT, 150);
    if (threads > 1) vpx_codec_control(&e->ctx, VP8E_SET_TOKEN_PARTITIONS, 1);
    return e;
}

int kl_vp8_enc_set_bitrate(struct kl_enc *e, unsigned kbps) {
    if (kbps == 0) return -1;
    e->cfg.rc_target_bitrate = kbps;
    return vpx_codec_enc_config_set(&e->ctx, &e->cfg) == VPX_CODEC_OK ? 0 : -1;
}

/* Encode one I420 frame (tightly packed planes). Writes the compressed
 * frame to out (at most cap bytes), its length to *len and whether it is
 * a key frame to *key. Returns 0, 1 when the encoder dropped the frame
 * (no output), -1 on an encoder error, -2 when out is too small. */
int kl_vp8_encode(struct kl_enc *e, const uint8_t *y, const uint8_t *u, const uint8_t *v,
                  int64_t pts, uint32_t duration, int force_key, uint8_t *out, size_t cap,
                  size_t *len, int *key, char *err, size_t errlen) {
    unsigned cw = (e->w + 1) / 2;
    vpx_img_wrap(&e->img, VPX_IMG_FMT_I420, e->w, e->h, 1, (unsigned char *)y);
    e->img.planes[VPX_PLANE_Y] = (unsigned char *)y;
    e->img.planes[VPX_PLANE_U] = (unsigned char *)u;
    e->img.planes[VPX_PLANE_V] = (unsigned char *)v;
    e->img.stride[VPX_PLANE_Y] = (int)e->w;
    e->img.stride[VPX_PLANE_U] = (int)cw;
    e->img.stride[VPX_PLANE_V] = (int)cw;
    vpx_enc_frame_flags_t flags = force_key ? VPX_EFLAG_FORCE_KF : 0;
    if (vpx_codec_encode(&e->ctx, &e->img, pts, duration, flags, VPX_DL_REALTIME) != VPX_CODEC_OK) {
        set_err(err, errlen, "VP8 encoding failed", &e->ctx);
        return -1;
    }
    vpx_codec_iter_t iter = NULL;
    const vpx_codec_cx_pkt_t *pkt;
    int got = 0;
    *len = 0;
    *key = 0;
    while ((pkt = vpx_codec_get_cx_data(&e->ctx, &iter)) != NULL) {
        if (pkt->kind != VPX_CODEC_CX_FRAME_PKT) continue;
        size_t n = pkt->data.frame.sz;
        if (*len + n > cap) return -2;
        memcpy(out + *len, pkt->data.frame.buf, n);
        *len += n;
        if (pkt->data.frame.flags & VPX_FRAME_IS_KEY) *key = 1;
        got = 1;
    }
    return got ? 0 : 1;
}

void kl_vp8_enc_free(struct kl_enc *e) {
    if (!e) return;
    vpx_codec_destroy(&e->ctx);
    free(e);
}

struct kl_dec *kl_vp8_dec_new(unsigned threads, char *err, size_t errlen) {
    struct kl_dec *d = calloc(1, sizeof *d);
    if (!d) { set_err(err, errlen, "out of memory", NULL); return NULL; }
    vpx_codec_dec_cfg_t cfg = {0};
    cfg.threads = threads;
    if (vpx_codec_dec_init(&d->ctx, vpx_codec_vp8_dx(), &cfg, 0) != VPX_CODEC_OK) {
        set_err(err, errlen, "cannot start the VP8 decoder", &d->ctx);
        free(d);
        return NULL;
    }
    return d;
}

/* Decode one compressed frame. Returns 1 with *w and *h set when a picture
 * came out (copy it with kl_vp8_dec_copy before the next call), 0 when
 * none did, -1 when the data is corrupt. */
int kl_vp8_decode(struct kl_dec *d, const uint8_t *data, size_t len, unsigned *w, unsigned *h,
                  char *err, size_t errlen) {
    d->img = NULL;
    if (vpx_codec_decode(&d->ctx, data, (unsigned int)len, NULL, 0) != VPX_CODEC_OK) {
        set_err(err, errlen, "corrupt VP8 frame", &d->ctx);
        return -1;
    }
    vpx_codec_iter_t iter = NULL;
    vpx_image_t *img;
    while ((img = vpx_codec_get_frame(&d->ctx, &iter)) != NULL) d->img = img;
    if (!d->img || d->img->fmt != VPX_IMG_FMT_I420) return 0;
    *w = d->img->d_w;
    *h = d->img->d_h;
    return 1;
}

/* Copy the last decoded picture into tightly packed I420 planes of the
 * size kl_vp8_decode reported. */
void kl_vp8_dec_copy(struct kl_dec *d, uint8_t *y, uint8_t *u, uint8_t *v) {
    vpx_image_t *img = d->img;
    if (!img) return;
    unsigned w = img->d_w, h = img->d_h, cw = (w + 1) / 2, ch = (h + 1) / 2;
    for (unsigned r = 0; r < h; r++)
        memcpy(y + (size_t)r * w, img->planes[VPX_PLANE_Y] + (size_t)r * img->stride[VPX_PLANE_Y], w);
    for (unsigned r = 0; r < ch; r++) {
        memcpy(u + (size_t)r * cw, img->planes[VPX_PLANE_U] + (size_t)r * img->stride[VPX_PLANE_U], cw);
        memcpy(v + (size_t)r * cw, img->planes[VPX_PLANE_V] + (size_t)r * img->stride[VPX_PLANE_V], cw);
    }
}

void kl_vp8_dec_free(struct kl_dec *d) {
    if (!d) return;
    vpx_codec_destroy(&d->ctx);
    free(d);
}
