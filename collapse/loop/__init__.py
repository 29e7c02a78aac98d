"""The recursion (`collapse run`) and grids of it (`collapse sweep`): the loop and its stages (``run``), one
generation's metrics row and console table (``rows``), the run folder without torch (``rundir``), each
generation's weights (``checkpoints``), the training sets (``regimes``).

May import every other folder (config, data, models, decoding, metrics, tracking, report); the commands
(cli, check) import it, the report reads run folders through ``rundir`` and config the regimes' names.
Importing this package imports nothing (``rundir`` stays torch-free).
"""
