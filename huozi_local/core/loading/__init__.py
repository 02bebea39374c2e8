"""One way to load a model, for every front end: read the header, plan, measure, load.

    open_model(spec)                     -> ModelFile    the file and its header, read once
    PlanInputs.of(settings, overrides)   -> PlanInputs   saved settings, this run's flags on top
    plan_load(model, machine, inputs)    -> PlannedLoad  the planner's choice for the Machine
    load_planned(planned, machine, ...)  -> LoadedModel  the measured fit, then llama.cpp

The CLI (`ask`, `chat`, `serve`), the app and the server all go through these functions; the
Machine is always the caller's (tests describe one), and llama-cpp-python's keyword arguments are
spelled only in `core.chat.loader`. This layer sits above planning, chat, fetch and devices,
which never import it.
"""
