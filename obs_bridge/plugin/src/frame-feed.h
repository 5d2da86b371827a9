/* Styled frames from the engine as a texture: the shared part of the source and of the filter's replace mode (and of
 * their properties dialogs).
 *
 * Everything happens in video_render, in the graphics context: renders of one source never run concurrently (OBS
 * holds the graphics lock while rendering, on its graphics thread or, for a screenshot, on another), so the reader
 * and the texture need no lock of their own. Only the status numbers are read from other threads (the properties
 * dialog); they are copied under `mutex`. */
#pragma once

#include <obs-module.h>
#include <util/dstr.h>
#include <util/threading.h>

#include "shm-frames.h"

struct sdv2_feed_stats {
	enum shmf_state state;
	uint32_t width, height;
	float fps;
	float latency_ms; /* from the engine's write to its upload in OBS */
};

struct sdv2_feed {
	struct shmf_reader reader;
	uint8_t *copy; /* the newest frame as read (RGB8 or RGBA8) */
	size_t copy_size;
	uint8_t *rgba; /* converted for upload */
	size_t rgba_size;
	gs_texture_t *tex;
	uint64_t window_ns; /* frame-rate window */
	uint32_t window_frames;
	struct sdv2_feed_stats now;

	pthread_mutex_t mutex;
	struct sdv2_feed_stats shown; /* a copy of `now` for other threads */
};

void sdv2_feed_init(struct sdv2_feed *f);
/* Graphics context: take the newest frame of `segment` into the texture. Returns the texture, or NULL unless the
 * writer lives and has sent a frame. */
gs_texture_t *sdv2_feed_update(struct sdv2_feed *f, const char *segment);
/* Any thread: the latest numbers. */
struct sdv2_feed_stats sdv2_feed_stats(struct sdv2_feed *f);
/* One status line; `channel` and `how` (what to run) name the fix when nothing arrives. */
void sdv2_feed_status(const struct sdv2_feed_stats *st, const char *channel, const char *how, struct dstr *out);
/* Graphics context. */
void sdv2_feed_free(struct sdv2_feed *f);

/* Draw `tex` at cx x cy with the default effect, sRGB-correct (graphics context). */
void sdv2_draw_texture(gs_texture_t *tex, uint32_t cx, uint32_t cy);
/* The properties dialog's status line (`text`, NULL for none) and its Refresh button. */
void sdv2_add_status(obs_properties_t *props, const char *text);
/* The "not running" card: a dark texture with `line` in block letters (graphics context). */
gs_texture_t *sdv2_card_create(uint32_t cx, uint32_t cy, const char *line);
