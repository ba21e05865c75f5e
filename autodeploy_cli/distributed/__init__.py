"""Multi-rank runs (`world_size: N`): launching the ranks (launch.py), their process groups and failure watchdog
(groups.py), and rank 0 driving the other ranks build by build and step by step (broadcast.py)."""
