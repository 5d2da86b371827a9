/* streamdiffusionv2_source: the engine's newest styled frame, at its native size.
 *
 * When no engine writes the channel (never started, stopped, crashed) it shows the "not running" card, or renders
 * the fallback source the user picked, within a second: never a frozen frame. A synchronous video source (rather
 * than obs_source_output_video) so that it can render the fallback source, and so that a frame shows at the next
 * render without going through OBS's async-frame queue. */
#include <obs-module.h>
#include <util/dstr.h>
#include <util/threading.h>

#include "frame-feed.h"

#define CARD_CX 640 /* the card's size before the engine ever sent a frame */
#define CARD_CY 360

struct sdv2_source {
	obs_source_t *self;

	pthread_mutex_t mutex; /* guards the next four fields: touched by the UI, tick and render threads */
	char channel[SHMF_CHANNEL_MAX + 1];
	char *fallback_name;
	obs_weak_source_t *fallback; /* resolved from fallback_name in tick, added as an active child */
	char *fallback_resolved;     /* the name `fallback` was resolved from */
	volatile long cx, cy;        /* what the last render drew (atomic: OBS asks from any thread) */

	/* render only (graphics context) */
	struct sdv2_feed feed;
	gs_texture_t *card;
	const char *card_line;
};

static const char *source_name(void *unused)
{
	UNUSED_PARAMETER(unused);
	return obs_module_text("StreamDiffusionV2.Source");
}

static void source_update(void *data, obs_data_t *settings)
{
	struct sdv2_source *s = data;
	pthread_mutex_lock(&s->mutex);
	snprintf(s->channel, sizeof(s->channel), "%s", obs_data_get_string(settings, "channel"));
	bfree(s->fallback_name);
	s->fallback_name = bstrdup(obs_data_get_string(settings, "fallback"));
	pthread_mutex_unlock(&s->mutex);
}

static void *source_create(obs_data_t *settings, obs_source_t *self)
{
	struct sdv2_source *s = bzalloc(sizeof(*s));
	s->self = self;
	s->cx = CARD_CX;
	s->cy = CARD_CY;
	pthread_mutex_init(&s->mutex, NULL);
	sdv2_feed_init(&s->feed);
	source_update(s, settings);
	return s;
}

/* Swap the resolved fallback for `fb` (a new reference, or NULL) and adjust the active child. */
static void set_fallback(struct sdv2_source *s, obs_source_t *fb, const char *name)
{
	pthread_mutex_lock(&s->mutex);
	obs_weak_source_t *old = s->fallback;
	s->fallback = fb ? obs_source_get_weak_source(fb) : NULL;
	bfree(s->fallback_resolved);
	s->fallback_resolved = fb ? bstrdup(name) : NULL;
	pthread_mutex_unlock(&s->mutex);

	obs_source_t *gone = obs_weak_source_get_source(old);
	if (gone) {
		obs_source_remove_active_child(s->self, gone);
		obs_source_release(gone);
	}
	obs_weak_source_release(old);
}

static void source_destroy(void *data)
{
	struct sdv2_source *s = data;
	set_fallback(s, NULL, NULL);
	obs_enter_graphics();
	sdv2_feed_free(&s->feed);
	gs_texture_destroy(s->card);
	obs_leave_graphics();
	bfree(s->fallback_name);
	pthread_mutex_destroy(&s->mutex);
	bfree(s);
}

static void source_defaults(obs_data_t *settings)
{
	obs_data_set_default_string(settings, "channel", "main");
	obs_data_set_default_string(settings, "fallback", "");
}

/* Tick (outside the graphics context): resolve the fallback source by name; again when it went away. */
static void source_tick(void *data, float seconds)
{
	UNUSED_PARAMETER(seconds);
	struct sdv2_source *s = data;
	pthread_mutex_lock(&s->mutex);
	char *name = bstrdup(s->fallback_name);
	bool same = s->fallback_resolved && strcmp(s->fallback_resolved, name) == 0;
	obs_source_t *current = obs_weak_source_get_source(s->fallback);
	pthread_mutex_unlock(&s->mutex);

	if (!(same && current)) {
		obs_source_t *fb = *name ? obs_get_source_by_name(name) : NULL;
		if (fb && (fb == s->self || !obs_source_add_active_child(s->self, fb))) { /* itself, or a loop */
			obs_source_release(fb);
			fb = NULL;
		}
		if (fb || current)
			set_fallback(s, fb, name);
		obs_source_release(fb);
	}
	obs_source_release(current);
	bfree(name);
}

static void source_render(void *data, gs_effect_t *effect)
{
	UNUSED_PARAMETER(effect);
	struct sdv2_source *s = data;
	char segment[SHMF_NAME_MAX];
	pthread_mutex_lock(&s->mutex);
	bool valid = shmf_segment_name(segment, s->channel, "sty");
	obs_source_t *fb = obs_weak_source_get_source(s->fallback);
	pthread_mutex_unlock(&s->mutex);

	gs_texture_t *tex = valid ? sdv2_feed_update(&s->feed, segment) : NULL;
	uint32_t cx, cy;
	if (tex) {
		cx = gs_texture_get_width(tex);
		cy = gs_texture_get_height(tex);
		sdv2_draw_texture(tex, cx, cy);
	} else if (fb) {
		cx = obs_source_get_width(fb);
		cy = obs_source_get_height(fb);
		obs_source_video_render(fb);
	} else {
		const char *line = !valid ? "BAD CHANNEL NAME"
				   : s->feed.now.state == SHMF_WAITING ? "ENGINE STARTING"
									: "NOT RUNNING";
		cx = s->feed.now.width ? s->feed.now.width : CARD_CX; /* the engine's last size keeps the layout */
		cy = s->feed.now.height ? s->feed.now.height : CARD_CY;
		if (!s->card || gs_texture_get_width(s->card) != cx || gs_texture_get_height(s->card) != cy ||
		    s->card_line != line) {
			gs_texture_destroy(s->card);
			s->card = sdv2_card_create(cx, cy, line);
			s->card_line = line;
		}
		if (s->card)
			sdv2_draw_texture(s->card, cx, cy);
	}
	obs_source_release(fb);
	os_atomic_set_long(&s->cx, (long)cx);
	os_atomic_set_long(&s->cy, (long)cy);
}

static uint32_t source_width(void *data)
{
	return (uint32_t)os_atomic_load_long(&((struct sdv2_source *)data)->cx);
}

static uint32_t source_height(void *data)
{
	return (uint32_t)os_atomic_load_long(&((struct sdv2_source *)data)->cy);
}

static bool add_video_source(void *list, obs_source_t *source)
{
	if (obs_source_get_output_flags(source) & OBS_SOURCE_VIDEO)
		obs_property_list_add_string(list, obs_source_get_name(source), obs_source_get_name(source));
	return true;
}

static obs_properties_t *source_properties(void *data)
{
	struct sdv2_source *s = data;
	obs_properties_t *props = obs_properties_create();
	obs_properties_add_text(props, "channel", obs_module_text("Channel"), OBS_TEXT_DEFAULT);
	obs_property_t *list = obs_properties_add_list(props, "fallback", obs_module_text("Fallback"),
						       OBS_COMBO_TYPE_LIST, OBS_COMBO_FORMAT_STRING);
	obs_property_list_add_string(list, obs_module_text("Fallback.Card"), "");
	obs_enum_sources(add_video_source, list);

	struct dstr status = {0}, how = {0};
	if (s) {
		char channel[SHMF_CHANNEL_MAX + 1];
		pthread_mutex_lock(&s->mutex);
		snprintf(channel, sizeof(channel), "%s", s->channel);
		pthread_mutex_unlock(&s->mutex);
		struct sdv2_feed_stats st = sdv2_feed_stats(&s->feed);
		dstr_printf(&how, "sdv2 run --source ... --out obs-source:%s", channel);
		sdv2_feed_status(&st, channel, how.array, &status);
	}
	sdv2_add_status(props, status.array);
	dstr_free(&status);
	dstr_free(&how);
	return props;
}

static void source_enum_active(void *data, obs_source_enum_proc_t enum_callback, void *param)
{
	struct sdv2_source *s = data;
	pthread_mutex_lock(&s->mutex);
	obs_source_t *fb = obs_weak_source_get_source(s->fallback);
	pthread_mutex_unlock(&s->mutex);
	if (fb) {
		enum_callback(s->self, fb, param);
		obs_source_release(fb);
	}
}

struct obs_source_info sdv2_source_info = {
	.id = "streamdiffusionv2_source",
	.type = OBS_SOURCE_TYPE_INPUT,
	.output_flags = OBS_SOURCE_VIDEO | OBS_SOURCE_CUSTOM_DRAW | OBS_SOURCE_SRGB,
	.get_name = source_name,
	.create = source_create,
	.destroy = source_destroy,
	.update = source_update,
	.get_defaults = source_defaults,
	.get_properties = source_properties,
	.video_tick = source_tick,
	.video_render = source_render,
	.get_width = source_width,
	.get_height = source_height,
	.enum_active_sources = source_enum_active,
	.icon_type = OBS_ICON_TYPE_CAMERA,
};
