/* streamdiffusionv2_filter: sends its source's frames to the engine and, in replace mode, shows the styled ones.
 *
 * Each OBS frame the filter renders its target into a texture, reads it back through a staging surface and
 * publishes it as RGB8 on segment sdv2-<channel>-cap (only while an engine reads it: an idle filter costs one
 * render-to-texture and no readback). In replace mode it draws the engine's newest frame from sdv2-<channel>-sty
 * scaled to the source's size instead, and the source itself while no engine runs (never a frozen frame). */
#include <obs-module.h>
#include <util/dstr.h>
#include <util/platform.h>
#include <util/threading.h>

#include "frame-feed.h"

struct sdv2_filter {
	obs_source_t *self;
	volatile bool capture_due; /* set each tick: capture once per OBS frame, however often the filter renders */

	pthread_mutex_t mutex; /* guards the fields up to `send_fps`: touched by the UI and render threads */
	char channel[SHMF_CHANNEL_MAX + 1];
	bool replace;
	enum shmf_state send_state;
	uint32_t sent_cx, sent_cy;
	float send_fps;

	/* render only (graphics context; OBS never renders one source on two threads at once) */
	struct shmf_writer writer;
	struct sdv2_feed feed;
	gs_texrender_t *render;
	gs_stagesurf_t *stage;
	uint64_t window_ns;
	uint32_t window_frames;
};

static const char *filter_name(void *unused)
{
	UNUSED_PARAMETER(unused);
	return obs_module_text("StreamDiffusionV2.Filter");
}

static void filter_update(void *data, obs_data_t *settings)
{
	struct sdv2_filter *f = data;
	pthread_mutex_lock(&f->mutex);
	snprintf(f->channel, sizeof(f->channel), "%s", obs_data_get_string(settings, "channel"));
	f->replace = strcmp(obs_data_get_string(settings, "mode"), "replace") == 0;
	pthread_mutex_unlock(&f->mutex);
}

static void *filter_create(obs_data_t *settings, obs_source_t *self)
{
	struct sdv2_filter *f = bzalloc(sizeof(*f));
	f->self = self;
	pthread_mutex_init(&f->mutex, NULL);
	sdv2_feed_init(&f->feed);
	obs_enter_graphics();
	f->render = gs_texrender_create(GS_RGBA, GS_ZS_NONE);
	obs_leave_graphics();
	filter_update(f, settings);
	return f;
}

static void filter_destroy(void *data)
{
	struct sdv2_filter *f = data;
	obs_enter_graphics();
	shmf_writer_close(&f->writer);
	sdv2_feed_free(&f->feed);
	gs_stagesurface_destroy(f->stage);
	gs_texrender_destroy(f->render);
	obs_leave_graphics();
	pthread_mutex_destroy(&f->mutex);
	bfree(f);
}

static void filter_defaults(obs_data_t *settings)
{
	obs_data_set_default_string(settings, "channel", "main");
	obs_data_set_default_string(settings, "mode", "replace");
}

static void filter_tick(void *data, float seconds)
{
	UNUSED_PARAMETER(seconds);
	os_atomic_set_bool(&((struct sdv2_filter *)data)->capture_due, true);
}

/* Render `target` into f->render; publish it on `segment` when an engine listens. */
static void capture(struct sdv2_filter *f, obs_source_t *target, uint32_t cx, uint32_t cy, const char *segment)
{
	uint64_t pts = os_gettime_ns();
	gs_texrender_reset(f->render);
	if (!gs_texrender_begin(f->render, cx, cy))
		return;
	struct vec4 clear;
	vec4_zero(&clear);
	gs_clear(GS_CLEAR_COLOR, &clear, 0.0f, 0);
	gs_ortho(0.0f, (float)cx, 0.0f, (float)cy, -100.0f, 100.0f);
	gs_blend_state_push();
	gs_blend_function(GS_BLEND_ONE, GS_BLEND_ZERO);
	obs_source_video_render(target);
	gs_blend_state_pop();
	gs_texrender_end(f->render);

	shmf_writer_beat(&f->writer);
	if (!shmf_writer_has_reader(&f->writer))
		return; /* nobody reads: spare the GPU-to-CPU copy */
	if (!f->stage || gs_stagesurface_get_width(f->stage) != cx || gs_stagesurface_get_height(f->stage) != cy) {
		gs_stagesurface_destroy(f->stage);
		f->stage = gs_stagesurface_create(cx, cy, GS_RGBA);
	}
	uint8_t *data;
	uint32_t linesize, stride;
	gs_stage_texture(f->stage, gs_texrender_get_texture(f->render));
	if (!gs_stagesurface_map(f->stage, &data, &linesize))
		return;
	uint8_t *dst = shmf_writer_begin(&f->writer, segment, cx, cy, SHMF_RGB8, &stride);
	if (dst) {
		for (uint32_t y = 0; y < cy; y++) {
			const uint8_t *src = data + (size_t)y * linesize;
			uint8_t *row = dst + (size_t)y * stride;
			for (uint32_t x = 0; x < cx; x++, src += 4, row += 3) {
				row[0] = src[0];
				row[1] = src[1];
				row[2] = src[2];
			}
		}
		shmf_writer_end(&f->writer, pts);
		f->window_frames++;
	}
	gs_stagesurface_unmap(f->stage);
}

static void filter_render(void *data, gs_effect_t *effect)
{
	UNUSED_PARAMETER(effect);
	struct sdv2_filter *f = data;
	obs_source_t *target = obs_filter_get_target(f->self);
	uint32_t cx = target ? obs_source_get_base_width(target) : 0;
	uint32_t cy = target ? obs_source_get_base_height(target) : 0;
	if (!cx || !cy) {
		obs_source_skip_video_filter(f->self);
		return;
	}
	char cap[SHMF_NAME_MAX], sty[SHMF_NAME_MAX];
	pthread_mutex_lock(&f->mutex);
	bool valid = shmf_segment_name(cap, f->channel, "cap") && shmf_segment_name(sty, f->channel, "sty");
	bool replace = f->replace;
	pthread_mutex_unlock(&f->mutex);

	if (os_atomic_set_bool(&f->capture_due, false)) {
		if (valid)
			capture(f, target, cx, cy, cap);
		uint64_t now = os_gettime_ns();
		if (now - f->window_ns >= 1000000000ull) {
			float fps = f->window_ns ? (float)(f->window_frames * 1e9 / (double)(now - f->window_ns)) : 0.0f;
			f->window_ns = now;
			f->window_frames = 0;
			pthread_mutex_lock(&f->mutex);
			f->send_fps = fps;
			f->send_state = f->writer.state;
			f->sent_cx = cx;
			f->sent_cy = cy;
			pthread_mutex_unlock(&f->mutex);
		}
	}
	gs_texture_t *tex = valid && replace ? sdv2_feed_update(&f->feed, sty) : NULL;
	if (!tex && valid)
		tex = gs_texrender_get_texture(f->render); /* the source itself, as captured this frame */
	if (tex)
		sdv2_draw_texture(tex, cx, cy);
	else
		obs_source_skip_video_filter(f->self);
}

static void filter_status(struct sdv2_filter *f, struct dstr *out)
{
	char channel[SHMF_CHANNEL_MAX + 1], segment[SHMF_NAME_MAX];
	pthread_mutex_lock(&f->mutex);
	snprintf(channel, sizeof(channel), "%s", f->channel);
	bool replace = f->replace, valid = shmf_segment_name(segment, f->channel, "cap");
	enum shmf_state state = f->send_state;
	uint32_t cx = f->sent_cx, cy = f->sent_cy;
	float fps = f->send_fps;
	pthread_mutex_unlock(&f->mutex);

	if (!valid) {
		dstr_printf(out, "Channel names are 1-20 letters, digits, '_' or '-'.");
		return;
	}
	if (state == SHMF_BUSY)
		dstr_printf(out, "Another StreamDiffusionV2 filter already sends on channel '%s': pick another channel.",
			    channel);
	else if (fps > 0.0f)
		dstr_printf(out, "Sending %ux%u at %.1f fps to the engine on channel '%s'.", cx, cy, fps, channel);
	else
		dstr_printf(out,
			    "No engine reads channel '%s' (the source must be visible): start one with "
			    "sdv2 run --source obs-filter:%s --out obs-source:%s",
			    channel, channel, channel);
	if (replace) {
		struct dstr styled = {0}, how = {0};
		struct sdv2_feed_stats st = sdv2_feed_stats(&f->feed);
		dstr_printf(&how, "--out obs-source:%s (showing the source meanwhile)", channel);
		sdv2_feed_status(&st, channel, how.array, &styled);
		dstr_catf(out, "\n%s", styled.array);
		dstr_free(&styled);
		dstr_free(&how);
	}
}

static obs_properties_t *filter_properties(void *data)
{
	struct sdv2_filter *f = data;
	obs_properties_t *props = obs_properties_create();
	obs_properties_add_text(props, "channel", obs_module_text("Channel"), OBS_TEXT_DEFAULT);
	obs_property_t *mode = obs_properties_add_list(props, "mode", obs_module_text("Mode"), OBS_COMBO_TYPE_LIST,
						       OBS_COMBO_FORMAT_STRING);
	obs_property_list_add_string(mode, obs_module_text("Mode.Replace"), "replace");
	obs_property_list_add_string(mode, obs_module_text("Mode.Send"), "send");

	struct dstr status = {0};
	if (f)
		filter_status(f, &status);
	sdv2_add_status(props, status.array);
	dstr_free(&status);
	return props;
}

struct obs_source_info sdv2_filter_info = {
	.id = "streamdiffusionv2_filter",
	.type = OBS_SOURCE_TYPE_FILTER,
	.output_flags = OBS_SOURCE_VIDEO | OBS_SOURCE_SRGB,
	.get_name = filter_name,
	.create = filter_create,
	.destroy = filter_destroy,
	.update = filter_update,
	.get_defaults = filter_defaults,
	.get_properties = filter_properties,
	.video_tick = filter_tick,
	.video_render = filter_render,
};
