"""Knowledge neurons and query localization (notebook 06; Dai et al. 2022, Chen et al. 2025).

==================  ===============================================================================
module              holds
==================  ===============================================================================
``positions``       where neurons are read ("last" token or the "subject"'s last token), layer checks
``queries``         a fact's queries (its relation's templates), kept where the model answers them
``attribution``     integrated gradients over every MLP neuron of every layer at once; activations
``selection``       neurons above a share of the prompt's max score; Dai's refinement by share of queries
``consistency``     consistency of a fact's neuron sets across its queries; static and Otsu thresholds
``interventions``   suppress/enhance neurons; scale attention to the most-attended positions
``modification``    consistency-aware (CAS) vs query-local vs global neuron sets for erase and update
``study``           the steps the notebook chains: facts → their queries' knowledge neurons → consistency
``study_text``      the notebook's computed sentences, built from its tables
==================  ===============================================================================

MLP neurons are reached only through :mod:`kc_utils.models` (``mlp_hidden_hook``, ``neuron_output_weights``).
"""
