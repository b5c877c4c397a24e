"""What every stage shares: label values, grids and geometry, resampling, file I/O, errors,
exclusions, the participant sheet, shards and the shard runner.

Nothing here imports a stage or the synthetic generator.
"""
