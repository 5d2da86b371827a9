/* The StreamDiffusionV2 OBS module: a source and a filter that exchange frames with the engine (PROTOCOL.md). */
#include <obs-module.h>

#include "shm-frames.h"

OBS_DECLARE_MODULE()
OBS_MODULE_USE_DEFAULT_LOCALE("streamdiffusionv2", "en-US")

extern struct obs_source_info sdv2_source_info;
extern struct obs_source_info sdv2_filter_info;

const char *obs_module_description(void)
{
	return "StreamDiffusionV2: real-time video stylisation through shared memory";
}

bool obs_module_load(void)
{
	obs_register_source(&sdv2_source_info);
	obs_register_source(&sdv2_filter_info);
	blog(LOG_INFO, "[streamdiffusionv2] loaded (frame protocol v%d)", SHMF_VERSION);
	return true;
}
