"""Knowledge neurons and query localization (notebook 06, Chen et al. 2025).

To come here: integrated-gradients attribution of MLP neurons (Dai et al. 2022), neuron selection
and refinement, consistency of a fact's neuron sets across its queries (static and Otsu
thresholds), suppress/enhance interventions, attention scaling ("knowledge synapses"), and the
consistency-aware neuron edit (CAS) against query-local and global sets. MLP neurons are reached
only through :mod:`kc_utils.models`' neuron hooks.
"""
