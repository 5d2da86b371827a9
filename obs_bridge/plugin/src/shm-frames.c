/* The shared-memory frame ring of PROTOCOL.md (see shm-frames.h). */
#include "shm-frames.h"

#include <stdio.h>
#include <string.h>

#include <util/bmem.h>
#include <util/platform.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

static const char MAGIC[8] = "SDV2FRM";

_Static_assert(sizeof(struct shmf_header) == SHMF_HEADER_SIZE, "header layout");
_Static_assert(sizeof(struct shmf_slot) == SHMF_SLOT_HEADER_SIZE, "slot layout");

/* -- ordering: the sequence lock needs acquire/release, nothing more ----------------------------------------------- */

#ifdef _MSC_VER
static inline uint64_t load_acquire(volatile uint64_t *p)
{
	uint64_t v = *p;
	MemoryBarrier();
	return v;
}
static inline void store_release(volatile uint64_t *p, uint64_t v)
{
	MemoryBarrier();
	*p = v;
}
#define fence_release() MemoryBarrier()
#define fence_acquire() MemoryBarrier()
#else
#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fence_release() __atomic_thread_fence(__ATOMIC_RELEASE)
#define fence_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#endif

/* -- named shared memory: POSIX shm or a Windows file mapping ------------------------------------------------------ */

#ifdef _WIN32
static bool map_create(struct shmf_map *m, const char *name, size_t size, bool *exists)
{
	HANDLE h = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, (DWORD)((uint64_t)size >> 32),
				      (DWORD)size, name);
	*exists = h && GetLastError() == ERROR_ALREADY_EXISTS;
	if (!h || *exists) {
		if (h)
			CloseHandle(h);
		return false;
	}
	m->base = MapViewOfFile(h, FILE_MAP_ALL_ACCESS, 0, 0, size);
	if (!m->base) {
		CloseHandle(h);
		return false;
	}
	m->handle = h;
	m->size = size;
	return true;
}

static bool map_open(struct shmf_map *m, const char *name)
{
	HANDLE h = OpenFileMappingA(FILE_MAP_ALL_ACCESS, FALSE, name);
	if (!h)
		return false;
	m->base = MapViewOfFile(h, FILE_MAP_ALL_ACCESS, 0, 0, 0);
	MEMORY_BASIC_INFORMATION info;
	if (!m->base || !VirtualQuery(m->base, &info, sizeof(info))) {
		if (m->base)
			UnmapViewOfFile(m->base);
		CloseHandle(h);
		m->base = NULL;
		return false;
	}
	m->handle = h;
	m->size = info.RegionSize;
	return true;
}

static void map_close(struct shmf_map *m)
{
	if (m->base) {
		UnmapViewOfFile(m->base);
		CloseHandle(m->handle);
	}
	memset(m, 0, sizeof(*m));
}

static void map_unlink(const char *name)
{
	(void)name; /* a mapping disappears with its last handle */
}

static uint32_t process_id(void)
{
	return (uint32_t)GetCurrentProcessId();
}
#else
static void posix_name(char out[SHMF_NAME_MAX + 1], const char *name)
{
	snprintf(out, SHMF_NAME_MAX + 1, "/%s", name);
}

/* Map `size` bytes of `fd` (0: a failure) into m and close fd. */
static bool map_fd(struct shmf_map *m, int fd, size_t size)
{
	void *p = size ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
	close(fd);
	if (p == MAP_FAILED)
		return false;
	m->base = p;
	m->size = size;
	return true;
}

static bool map_create(struct shmf_map *m, const char *name, size_t size, bool *exists)
{
	char path[SHMF_NAME_MAX + 1];
	posix_name(path, name);
	int fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
	*exists = fd < 0 && errno == EEXIST;
	if (fd < 0)
		return false;
	bool mapped = map_fd(m, fd, ftruncate(fd, (off_t)size) == 0 ? size : 0);
	if (!mapped)
		shm_unlink(path);
	return mapped;
}

static bool map_open(struct shmf_map *m, const char *name)
{
	char path[SHMF_NAME_MAX + 1];
	posix_name(path, name);
	int fd = shm_open(path, O_RDWR, 0); /* read-write: readers stamp reader_ns */
	if (fd < 0)
		return false;
	struct stat st;
	bool whole = fstat(fd, &st) == 0 && st.st_size >= SHMF_HEADER_SIZE;
	return map_fd(m, fd, whole ? (size_t)st.st_size : 0);
}

static void map_close(struct shmf_map *m)
{
	if (m->base)
		munmap(m->base, m->size);
	memset(m, 0, sizeof(*m));
}

static void map_unlink(const char *name)
{
	char path[SHMF_NAME_MAX + 1];
	posix_name(path, name);
	shm_unlink(path);
}

static uint32_t process_id(void)
{
	return (uint32_t)getpid();
}
#endif

/* -- header -------------------------------------------------------------------------------------------------------- */

bool shmf_segment_name(char out[SHMF_NAME_MAX], const char *channel, const char *direction)
{
	size_t n = strlen(channel);
	if (n == 0 || n > SHMF_CHANNEL_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = channel[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
			  c == '-';
		if (!ok)
			return false;
	}
	snprintf(out, SHMF_NAME_MAX, "sdv2-%s-%s", channel, direction);
	return true;
}

static struct shmf_header *header_of(const struct shmf_map *m)
{
	return (struct shmf_header *)m->base;
}

static struct shmf_slot *slot_of(const struct shmf_map *m, uint64_t frame)
{
	const struct shmf_header *h = header_of(m);
	return (struct shmf_slot *)(m->base + SHMF_HEADER_SIZE + (frame % h->slot_count) * h->slot_stride);
}

/* SHMF_WAITING (not written yet), SHMF_INCOMPATIBLE, or SHMF_LIVE for a well-formed header. */
static enum shmf_state check_header(const struct shmf_map *m)
{
	const struct shmf_header *h = header_of(m);
	static const char zero[8];
	if (memcmp(h->magic, zero, 8) == 0)
		return SHMF_WAITING;
	if (memcmp(h->magic, MAGIC, 8) != 0 || h->version != SHMF_VERSION || h->header_size != SHMF_HEADER_SIZE ||
	    h->slot_header_size != SHMF_SLOT_HEADER_SIZE || h->slot_count < 2 || h->slot_count > 16 ||
	    h->slot_stride % 64 || h->capacity > h->slot_stride - SHMF_SLOT_HEADER_SIZE ||
	    SHMF_HEADER_SIZE + (uint64_t)h->slot_count * h->slot_stride > m->size)
		return SHMF_INCOMPATIBLE;
	return SHMF_LIVE;
}

static bool writer_alive(const struct shmf_header *h, uint64_t now)
{
	uint64_t beat = load_acquire((volatile uint64_t *)&h->heartbeat_ns);
	return !(h->flags & (SHMF_CLOSED | SHMF_RETIRED)) && (now < beat || now - beat < SHMF_ALIVE_NS);
}

/* -- writer -------------------------------------------------------------------------------------------------------- */

static void writer_release(struct shmf_writer *w, uint32_t flag)
{
	if (!w->map.base)
		return;
	header_of(&w->map)->flags |= flag;
	fence_release();
	map_close(&w->map);
	map_unlink(w->name);
}

/* Remove a dead writer's segment; false if a live writer holds it. */
static bool evict(const char *name, uint64_t now)
{
	struct shmf_map other = {0};
	if (!map_open(&other, name))
		return true; /* gone meanwhile, or a Windows name we cannot open: create will tell */
	bool live = check_header(&other) == SHMF_LIVE && writer_alive(header_of(&other), now);
	map_close(&other);
	if (!live)
		map_unlink(name);
	return !live;
}

static bool writer_create(struct shmf_writer *w, uint64_t capacity, uint64_t now)
{
	uint64_t stride = (SHMF_SLOT_HEADER_SIZE + capacity + 63) / 64 * 64;
	size_t size = (size_t)(SHMF_HEADER_SIZE + SHMF_SLOTS * stride);
	bool exists = false;
	if (!map_create(&w->map, w->name, size, &exists)) {
		if (!exists)
			return false;
		if (!evict(w->name, now)) {
			w->state = SHMF_BUSY;
			return false;
		}
		if (!map_create(&w->map, w->name, size, &exists))
			return false;
	}
	struct shmf_header *h = header_of(&w->map);
	h->version = SHMF_VERSION;
	h->header_size = SHMF_HEADER_SIZE;
	h->slot_count = SHMF_SLOTS;
	h->slot_header_size = SHMF_SLOT_HEADER_SIZE;
	h->slot_stride = stride;
	h->capacity = capacity;
	h->writer_pid = process_id();
	h->heartbeat_ns = now;
	h->created_ns = now;
	h->period_ns = w->period_ns;
	fence_release();
	memcpy(h->magic, MAGIC, 8); /* last: a reader that sees the magic sees the rest */
	w->capacity = capacity;
	w->slot_stride = stride;
	return true;
}

uint8_t *shmf_writer_begin(struct shmf_writer *w, const char *name, uint32_t width, uint32_t height, uint32_t format,
			   uint32_t *stride)
{
	uint64_t now = os_gettime_ns();
	uint32_t bpp = format == SHMF_RGB8 ? 3 : 4;
	uint64_t bytes = (uint64_t)width * bpp * height;
	if (!width || !height || width > SHMF_MAX_SIDE || height > SHMF_MAX_SIDE)
		return NULL;
	if (strcmp(name, w->name) != 0) { /* another channel: let go of the old segment */
		writer_release(w, SHMF_CLOSED);
		snprintf(w->name, sizeof(w->name), "%s", name);
		w->retry_ns = 0;
	}
	if (w->map.base && bytes > w->capacity)
		writer_release(w, SHMF_RETIRED);
	if (!w->map.base) {
		if (now < w->retry_ns)
			return NULL;
		if (!writer_create(w, bytes, now)) {
			w->retry_ns = now + SHMF_ALIVE_NS;
			return NULL;
		}
	}
	w->state = SHMF_LIVE;
	struct shmf_header *h = header_of(&w->map);
	uint64_t n = h->latest + 1;
	struct shmf_slot *s = slot_of(&w->map, n);
	s->lock += 1; /* odd: being written */
	fence_release();
	s->frame.number = n;
	s->frame.width = width;
	s->frame.height = height;
	s->frame.stride = width * bpp;
	s->frame.format = format;
	w->open_slot = s;
	*stride = s->frame.stride;
	return (uint8_t *)s + SHMF_SLOT_HEADER_SIZE;
}

void shmf_writer_end(struct shmf_writer *w, uint64_t pts_ns)
{
	struct shmf_slot *s = w->open_slot;
	if (!s)
		return;
	uint64_t now = os_gettime_ns();
	s->frame.pts_ns = pts_ns;
	s->frame.write_ns = now;
	store_release(&s->lock, s->lock + 1); /* even: stable */
	struct shmf_header *h = header_of(&w->map);
	store_release(&h->latest, s->frame.number);
	h->heartbeat_ns = now;
	w->open_slot = NULL;
}

void shmf_writer_beat(struct shmf_writer *w)
{
	if (w->map.base)
		store_release(&header_of(&w->map)->heartbeat_ns, os_gettime_ns());
}

bool shmf_writer_has_reader(const struct shmf_writer *w)
{
	uint64_t now = os_gettime_ns();
	if (!w->map.base)
		return now >= w->retry_ns; /* no segment yet: write a frame so that readers find one */
	uint64_t seen = load_acquire(&header_of(&w->map)->reader_ns);
	return seen && (now < seen || now - seen < SHMF_ALIVE_NS);
}

void shmf_writer_close(struct shmf_writer *w)
{
	writer_release(w, SHMF_CLOSED);
	w->state = SHMF_ABSENT;
}

/* -- reader -------------------------------------------------------------------------------------------------------- */

static void reader_open(struct shmf_reader *r, uint64_t now)
{
	r->next_open_ns = now + SHMF_REOPEN_NS;
	if (!map_open(&r->map, r->name)) {
		r->state = SHMF_ABSENT;
		return;
	}
	enum shmf_state s = check_header(&r->map);
	if (s == SHMF_LIVE && !writer_alive(header_of(&r->map), now))
		s = SHMF_GONE;
	if (s != SHMF_LIVE) {
		map_close(&r->map);
		r->state = s == SHMF_WAITING ? SHMF_ABSENT : s; /* a header not written yet: look again later */
		return;
	}
	const struct shmf_header *h = header_of(&r->map);
	if (h->created_ns != r->created_ns) { /* a new writer numbers its frames afresh */
		r->created_ns = h->created_ns;
		r->last = 0;
	}
}

static bool frame_fits(const struct shmf_frame *f, uint64_t capacity)
{
	uint32_t bpp = f->format == SHMF_RGB8 ? 3 : f->format == SHMF_RGBA8 ? 4 : 0;
	return bpp && f->width && f->height && f->width <= SHMF_MAX_SIDE && f->height <= SHMF_MAX_SIDE &&
	       (uint64_t)f->width * bpp <= f->stride && (uint64_t)f->stride * f->height <= capacity;
}

bool shmf_reader_poll(struct shmf_reader *r, const char *name, struct shmf_frame *frame, uint8_t **buf,
		      size_t *buf_size)
{
	uint64_t now = os_gettime_ns();
	if (strcmp(name, r->name) != 0) {
		shmf_reader_close(r);
		snprintf(r->name, sizeof(r->name), "%s", name);
	}
	if (r->map.base && !writer_alive(header_of(&r->map), now)) {
		map_close(&r->map); /* never show a dead writer's last frame; let go of the name */
		r->state = SHMF_GONE;
	}
	if (!r->map.base) {
		if (now < r->next_open_ns)
			return false;
		reader_open(r, now);
		if (!r->map.base)
			return false;
	}
	struct shmf_header *h = header_of(&r->map);
	store_release(&h->reader_ns, now);
	for (int attempt = 0; attempt < 4; attempt++) {
		uint64_t n = load_acquire(&h->latest);
		r->state = n ? SHMF_LIVE : SHMF_WAITING;
		if (!n || n == r->last)
			return false;
		struct shmf_slot *s = slot_of(&r->map, n);
		uint64_t lock = load_acquire(&s->lock);
		struct shmf_frame f = s->frame;
		if ((lock & 1) || f.number != n || !frame_fits(&f, h->capacity)) {
			r->races++; /* lapped, or fields of a frame being written */
			continue;
		}
		size_t bytes = (size_t)f.stride * f.height;
		if (*buf_size < bytes) {
			*buf = brealloc(*buf, bytes);
			*buf_size = bytes;
		}
		memcpy(*buf, (uint8_t *)s + SHMF_SLOT_HEADER_SIZE, bytes);
		fence_acquire();
		if (load_acquire(&s->lock) != lock) {
			r->races++; /* overwritten during the copy: torn */
			continue;
		}
		r->last = n;
		*frame = f;
		return true;
	}
	return false;
}

void shmf_reader_close(struct shmf_reader *r)
{
	map_close(&r->map);
	r->state = SHMF_ABSENT;
	r->next_open_ns = 0;
}
