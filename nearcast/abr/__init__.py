"""A real adaptive-bitrate client: fetches HLS from edges like a player, with ABR, failover and QoE."""
