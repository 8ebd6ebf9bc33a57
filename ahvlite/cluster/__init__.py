"""Operations over several hosts: inventory, facts, placement, migration, CVMs."""
