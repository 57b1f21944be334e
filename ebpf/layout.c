/* Prints the layout of the types in fanout_xdp.h as the C compiler sees it, one line per
 * type and field ("type SIZE" then "type.field OFFSET"); the forwarder's build script runs
 * it and a test compares the `#[repr(C)]` mirrors in forwarder/src/edge/layout.rs. */
#include <stddef.h>
#include <stdio.h>

#include "fanout_xdp.h"

#define TYPE(t) printf("%s %zu\n", #t, sizeof(struct t))
#define FIELD(t, f) printf("%s.%s %zu\n", #t, #f, offsetof(struct t, f))

int main(void)
{
	TYPE(fanout_config);
	FIELD(fanout_config, source_interval_ns);
	FIELD(fanout_config, source_burst);
	FIELD(fanout_config, flood_interval_ns);
	FIELD(fanout_config, flood_burst);
	FIELD(fanout_config, flags);
	TYPE(fanout_port);
	FIELD(fanout_port, flags);
	TYPE(fanout_peer);
	FIELD(fanout_peer, addr);
	FIELD(fanout_peer, port_be);
	TYPE(fanout_source);
	FIELD(fanout_source, addr);
	TYPE(fanout_bucket);
	FIELD(fanout_bucket, tat_ns);
	TYPE(fanout_counter);
	FIELD(fanout_counter, packets);
	FIELD(fanout_counter, bytes);
	printf("FANOUT_FLAG_LATCHING_OPEN %u\n", FANOUT_FLAG_LATCHING_OPEN);
	printf("FANOUT_FLAG_REDIRECT_XSK %u\n", FANOUT_FLAG_REDIRECT_XSK);
	printf("FANOUT_VERDICTS %d\n", FANOUT_VERDICTS);
	printf("FANOUT_DROP_FLOOD %d\n", FANOUT_DROP_FLOOD);
	return 0;
}
