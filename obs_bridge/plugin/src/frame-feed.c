/* Styled frames from the engine as a texture, and drawing helpers (see frame-feed.h). */
#include "frame-feed.h"

#include <string.h>

#include <util/platform.h>

void sdv2_feed_init(struct sdv2_feed *f)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->mutex, NULL);
}

/* The frame just read, as RGBA rows for the texture (RGB8 gets an opaque alpha). */
static const uint8_t *to_rgba(struct sdv2_feed *f, const struct shmf_frame *fr)
{
	if (fr->format == SHMF_RGBA8 && fr->stride == fr->width * 4)
		return f->copy;
	size_t need = (size_t)fr->width * fr->height * 4;
	if (f->rgba_size < need) {
		f->rgba = brealloc(f->rgba, need);
		f->rgba_size = need;
	}
	for (uint32_t y = 0; y < fr->height; y++) {
		const uint8_t *src = f->copy + (size_t)y * fr->stride;
		uint8_t *dst = f->rgba + (size_t)y * fr->width * 4;
		if (fr->format == SHMF_RGBA8) {
			memcpy(dst, src, (size_t)fr->width * 4);
			continue;
		}
		for (uint32_t x = 0; x < fr->width; x++, src += 3, dst += 4) {
			dst[0] = src[0];
			dst[1] = src[1];
			dst[2] = src[2];
			dst[3] = 255;
		}
	}
	return f->rgba;
}

gs_texture_t *sdv2_feed_update(struct sdv2_feed *f, const char *segment)
{
	uint64_t now = os_gettime_ns();
	struct shmf_frame fr;
	if (shmf_reader_poll(&f->reader, segment, &fr, &f->copy, &f->copy_size)) {
		if (!f->tex || gs_texture_get_width(f->tex) != fr.width || gs_texture_get_height(f->tex) != fr.height) {
			gs_texture_destroy(f->tex);
			f->tex = gs_texture_create(fr.width, fr.height, GS_RGBA, 1, NULL, GS_DYNAMIC);
		}
		if (f->tex)
			gs_texture_set_image(f->tex, to_rgba(f, &fr), fr.width * 4, false);
		f->now.width = fr.width;
		f->now.height = fr.height;
		f->now.latency_ms = now > fr.write_ns ? (float)((now - fr.write_ns) / 1e6) : 0.0f;
		f->window_frames++;
	}
	if (now - f->window_ns >= 1000000000ull) {
		f->now.fps = f->window_ns ? (float)(f->window_frames * 1e9 / (double)(now - f->window_ns)) : 0.0f;
		f->window_ns = now;
		f->window_frames = 0;
	}
	f->now.state = f->reader.state;
	pthread_mutex_lock(&f->mutex);
	f->shown = f->now;
	pthread_mutex_unlock(&f->mutex);
	return f->reader.state == SHMF_LIVE ? f->tex : NULL;
}

struct sdv2_feed_stats sdv2_feed_stats(struct sdv2_feed *f)
{
	pthread_mutex_lock(&f->mutex);
	struct sdv2_feed_stats st = f->shown;
	pthread_mutex_unlock(&f->mutex);
	return st;
}

void sdv2_feed_status(const struct sdv2_feed_stats *st, const char *channel, const char *how, struct dstr *out)
{
	switch (st->state) {
	case SHMF_LIVE:
		dstr_printf(out, "Engine connected on channel '%s': %ux%u, %.1f fps, %.1f ms from engine to OBS", channel,
			    st->width, st->height, st->fps, st->latency_ms);
		break;
	case SHMF_WAITING:
		dstr_printf(out, "Engine on channel '%s' is starting (no frame yet)", channel);
		break;
	case SHMF_INCOMPATIBLE:
		dstr_printf(out,
			    "Channel '%s' speaks another frame-protocol version: update the plugin "
			    "(sdv2 obs install-plugin) and the app to the same release",
			    channel);
		break;
	default:
		dstr_printf(out, "Engine not running on channel '%s': start it with %s", channel, how);
	}
}

void sdv2_feed_free(struct sdv2_feed *f)
{
	shmf_reader_close(&f->reader);
	bfree(f->copy);
	bfree(f->rgba);
	gs_texture_destroy(f->tex);
	pthread_mutex_destroy(&f->mutex);
	memset(f, 0, sizeof(*f));
}

void sdv2_draw_texture(gs_texture_t *tex, uint32_t cx, uint32_t cy)
{
	gs_effect_t *effect = obs_get_base_effect(OBS_EFFECT_DEFAULT);
	const bool previous = gs_framebuffer_srgb_enabled();
	gs_enable_framebuffer_srgb(true);
	gs_blend_state_push();
	gs_blend_function(GS_BLEND_ONE, GS_BLEND_INVSRCALPHA);
	gs_effect_set_texture_srgb(gs_effect_get_param_by_name(effect, "image"), tex);
	while (gs_effect_loop(effect, "Draw"))
		gs_draw_sprite(tex, 0, cx, cy);
	gs_blend_state_pop();
	gs_enable_framebuffer_srgb(previous);
}

/* -- the "not running" card ---------------------------------------------------------------------------------------- */

/* 5x7 block letters for the words on the card; rows top to bottom, bit 4 = leftmost column. */
static const struct glyph {
	char c;
	uint8_t rows[7];
} GLYPHS[] = {
	{'A', {14, 17, 17, 31, 17, 17, 17}}, {'D', {30, 17, 17, 17, 17, 17, 30}}, {'E', {31, 16, 16, 30, 16, 16, 31}},
	{'F', {31, 16, 16, 30, 16, 16, 16}}, {'G', {14, 17, 16, 23, 17, 17, 15}}, {'I', {14, 4, 4, 4, 4, 4, 14}},
	{'M', {17, 27, 21, 21, 17, 17, 17}}, {'N', {17, 25, 21, 19, 17, 17, 17}}, {'O', {14, 17, 17, 17, 17, 17, 14}},
	{'R', {30, 17, 17, 30, 20, 18, 17}}, {'S', {15, 16, 16, 14, 1, 1, 30}},    {'T', {31, 4, 4, 4, 4, 4, 4}},
	{'U', {17, 17, 17, 17, 17, 17, 14}}, {'V', {17, 17, 17, 17, 17, 10, 4}},   {'2', {14, 17, 1, 2, 4, 8, 31}},
};

static const uint8_t *glyph_rows(char c)
{
	for (size_t i = 0; i < sizeof(GLYPHS) / sizeof(GLYPHS[0]); i++)
		if (GLYPHS[i].c == c)
			return GLYPHS[i].rows;
	return NULL; /* blank */
}

static void fill(uint8_t *px, uint32_t cx, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h, const uint8_t rgb[3])
{
	for (uint32_t y = y0; y < y0 + h; y++)
		for (uint32_t x = x0; x < x0 + w; x++) {
			uint8_t *p = px + ((size_t)y * cx + x) * 4;
			p[0] = rgb[0];
			p[1] = rgb[1];
			p[2] = rgb[2];
			p[3] = 255;
		}
}

static void text(uint8_t *px, uint32_t cx, uint32_t cy, const char *s, uint32_t top, const uint8_t rgb[3])
{
	uint32_t n = (uint32_t)strlen(s);
	uint32_t scale = cx * 3 / 5 / (n * 6); /* the line spans ~60% of the width */
	if (scale == 0)
		scale = 1;
	uint32_t left = cx > n * 6 * scale ? (cx - n * 6 * scale) / 2 : 0;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *rows = glyph_rows(s[i]);
		for (uint32_t r = 0; rows && r < 7; r++)
			for (uint32_t c = 0; c < 5; c++) {
				uint32_t x = left + (i * 6 + c) * scale, y = top + r * scale;
				if ((rows[r] >> (4 - c)) & 1 && x + scale <= cx && y + scale <= cy)
					fill(px, cx, x, y, scale, scale, rgb);
			}
	}
}

gs_texture_t *sdv2_card_create(uint32_t cx, uint32_t cy, const char *line)
{
	static const uint8_t background[3] = {24, 24, 32}, accent[3] = {140, 100, 230}, ink[3] = {230, 230, 240};
	uint8_t *px = bmalloc((size_t)cx * cy * 4);
	fill(px, cx, 0, 0, cx, cy, background);
	fill(px, cx, 0, cy - cy / 40 - 1, cx, cy / 40 + 1, accent); /* a thin bar along the bottom */
	text(px, cx, cy, "STREAMDIFFUSIONV2", cy * 3 / 10, accent);
	text(px, cx, cy, line, cy / 2, ink);
	const uint8_t *planes[1] = {px};
	gs_texture_t *tex = gs_texture_create(cx, cy, GS_RGBA, 1, planes, 0);
	bfree(px);
	return tex;
}

static bool refresh_clicked(obs_properties_t *props, obs_property_t *p, void *data)
{
	UNUSED_PARAMETER(props);
	UNUSED_PARAMETER(p);
	UNUSED_PARAMETER(data);
	return true; /* rebuilds the dialog, and with it the status line */
}

void sdv2_add_status(obs_properties_t *props, const char *text)
{
	obs_property_t *info = obs_properties_add_text(props, "status", text ? text : "", OBS_TEXT_INFO);
	obs_property_text_set_info_word_wrap(info, true);
	obs_properties_add_button(props, "refresh", obs_module_text("Refresh"), refresh_clicked);
}
