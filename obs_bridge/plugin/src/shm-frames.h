/* The shared-memory frame ring of PROTOCOL.md: segments, publishing a frame, reading the newest one.
 *
 * Both ends are polled by their owner (a source's or filter's video_tick / video_render on the graphics thread);
 * nothing here blocks or allocates while a frame is copied except growing the reader's buffer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHMF_VERSION 1
#define SHMF_HEADER_SIZE 256
#define SHMF_SLOT_HEADER_SIZE 64
#define SHMF_SLOTS 3
#define SHMF_RGBA8 1
#define SHMF_RGB8 2
#define SHMF_CLOSED 1u
#define SHMF_RETIRED 2u
#define SHMF_MAX_SIDE 16384
#define SHMF_ALIVE_NS 500000000ull /* a heartbeat older than this (5 missed beats) means the writer is gone */
#define SHMF_REOPEN_NS 250000000ull /* how often a reader looks for a (new) writer */
#define SHMF_NAME_MAX 32            /* "sdv2-" + 20-character channel + "-cap" + NUL fits */
#define SHMF_CHANNEL_MAX 20

struct shmf_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint32_t slot_count;
	uint32_t slot_header_size;
	uint64_t slot_stride;
	uint64_t capacity;
	uint32_t flags;
	uint32_t writer_pid;
	uint64_t heartbeat_ns;
	uint64_t latest;
	uint64_t created_ns;
	uint64_t period_ns;
	uint64_t reader_ns;
	uint8_t reserved[168];
};

struct shmf_frame {
	uint64_t number;
	uint32_t width;
	uint32_t height;
	uint32_t stride;
	uint32_t format;
	uint64_t pts_ns;
	uint64_t write_ns;
};

/* A slot's header: a sequence lock (odd while the frame is being written), then the frame's description. */
struct shmf_slot {
	uint64_t lock;
	struct shmf_frame frame;
	uint8_t reserved[16];
};

struct shmf_map {
	uint8_t *base;
	size_t size;
	void *handle; /* Windows: the file-mapping handle */
};

enum shmf_state {
	SHMF_ABSENT,       /* no segment of that name */
	SHMF_GONE,         /* its writer stopped or died */
	SHMF_WAITING,      /* writer alive, no frame yet */
	SHMF_LIVE,         /* writer alive, frames available */
	SHMF_INCOMPATIBLE, /* another protocol version or not a frame segment */
	SHMF_BUSY,         /* writer only: another live writer holds the name */
};

struct shmf_writer {
	char name[SHMF_NAME_MAX];
	struct shmf_map map;
	uint64_t capacity;
	uint64_t slot_stride;
	uint64_t period_ns;
	uint64_t retry_ns; /* when a refused or failed create may be tried again */
	enum shmf_state state;
	struct shmf_slot *open_slot; /* between begin and end */
};

struct shmf_reader {
	char name[SHMF_NAME_MAX];
	struct shmf_map map;
	uint64_t created_ns;
	uint64_t last;
	uint64_t next_open_ns;
	uint64_t races; /* copies thrown away because the writer overwrote the slot meanwhile */
	enum shmf_state state;
};

/* "sdv2-<channel>-<direction>"; false if the channel is not 1-20 of A-Z a-z 0-9 _ - */
bool shmf_segment_name(char out[SHMF_NAME_MAX], const char *channel, const char *direction);

/* Start a frame of width x height in `format` on segment `name` (created or re-created as needed). Returns where
 * the caller writes `*stride`-byte rows, or NULL when the segment is not available (see w->state). Must be
 * followed by shmf_writer_end. */
uint8_t *shmf_writer_begin(struct shmf_writer *w, const char *name, uint32_t width, uint32_t height, uint32_t format,
			   uint32_t *stride);
void shmf_writer_end(struct shmf_writer *w, uint64_t pts_ns);
/* Refresh the heartbeat (call every frame, frames or not). */
void shmf_writer_beat(struct shmf_writer *w);
/* True while some reader polled within the last second (writers may skip work otherwise). */
bool shmf_writer_has_reader(const struct shmf_writer *w);
/* Mark the segment CLOSED, unlink and unmap it. */
void shmf_writer_close(struct shmf_writer *w);

/* Take the newest complete frame of segment `name` not taken before: copies its pixels into *buf (grown with
 * brealloc as needed) and fills *frame. Returns false when there is none; r->state says why. */
bool shmf_reader_poll(struct shmf_reader *r, const char *name, struct shmf_frame *frame, uint8_t **buf,
		      size_t *buf_size);
void shmf_reader_close(struct shmf_reader *r);
