"""The training machinery: from a config to objects, the loop, and everything a run writes and reads back.
Nothing is imported here, so `spikeep.training.files` and `spikeep.training.plots` (base tier: the
physics and the traces use them too) stay light. The README's dependency picture places each module.

    from a config to objects
        validation.py        a config checked against the package; load_config
        build.py             config -> network, engine, learner, optimizer, scheduler, plasticity
        learners.py          one learner per method (RateEP, SpikingEP, BPTT): estimate(x, y) -> StepResult
        torch_settings.py    device, precision flags, threads
    the loop
        trainer.py           train(cfg, run_dir): the loop
        time_budget.py       train.minutes: the plan, the deadline, Budget (called by the loop)
        divergence.py        NaN / inf checks (DivergenceError, FiniteChecks)
        data_parallel.py     torchrun: process group, shards, all-reduce
        evaluation.py        loss and accuracy at the free equilibrium; evaluate_run, load_run
    the run folder
        run_folder.py        layout and safety, the lock; a run started, or a stopped one read back for --resume
        checkpoint_files.py  checkpoint.pt / best.pt: written atomically, loaded safely and checked
        train_state.py       TrainState: what a checkpoint holds, saved and restored (bitwise resume)
        epochs.py            an epoch's running metrics (EpochStats) and files (metrics.csv, summary.json, curves)
        train_log.py         train.log (and the console echo)
        provenance.py        git commit, env.json
        trace_recording.py   traces.h5 opened for a run, its attributes, snapshots
    written from a run
        nir_export.py        a trained spiking network as a NIR graph
    base tier (used by every part of spikeep that writes)
        files.py             atomic writes, free space, stale temporaries
        plots.py             every picture: curves, angles, rasters, rate convergence, gdu
"""
