"""The recursion (`collapse run`) and grids of it (`collapse sweep`): the loop and its stages (``run``), one
generation's metrics row and console table (``rows``), the run folder without torch (``rundir``), each
generation's weights (``checkpoints``), the training sets (``regimes``), the checksums of every file a stage
writes (``integrity``).

May import every other folder (config, data, models, decoding, metrics, tracking, report); the commands
(cli, check) import it, the report reads run folders through ``rundir`` and ``integrity``, and config the
regimes' names.
Importing this package imports nothing (``rundir`` stays torch-free).
"""
