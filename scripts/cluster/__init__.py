"""What a multi-host deployment test needs besides the web app: its servers (servers.py), each
startable on 127.0.0.1 or inside a host of scripts.cluster_net.Hosts. No torch, no Flask."""
