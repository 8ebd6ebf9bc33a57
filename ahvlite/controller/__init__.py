"""The controller daemon: coordination store, leader election, tasks, host monitor, stats."""
