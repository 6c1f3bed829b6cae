"""Differential privacy for federated rounds, and the budget it spends.

Central DP with client-side clipping (DP-FedAvg, McMahan et al. 2018), as Flower provides it: each
client clips its adapter *update* (new minus received) to L2 norm ``clipping_norm`` with Flower's
``fixedclipping_mod``; the server's ``DifferentialPrivacyClientSideFixedClipping`` averages the
updates with equal weights and adds Gaussian noise of std ``noise_multiplier * clipping_norm / n``.
The guarantee is per client (a client's whole dataset), against anyone who sees the global adapters.

The budget is Flower's Rényi-DP accountant (Google's dp-accounting underneath), composed once per
aggregated round, with no credit for client sampling ("no-amplification": the conservative bound,
and the only one Flower's accountant takes with fixed clipping). ``epsilon_after`` gives the figure
before a run, for choosing the noise.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                               SamplingMethod)


def make_accountant(privacy, population: int):
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    config = PrivacyConfig(target_delta=privacy.delta, population_size=population,
                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                           sampling_method=SamplingMethod.NO_AMPLIFICATION)
    return RdpAccountant(config)


def epsilon_after(privacy, rounds: int, clients: int) -> float:
    """Epsilon at ``privacy.delta`` after ``rounds`` aggregated rounds of ``clients`` each."""
    accountant = make_accountant(privacy, clients)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=privacy.noise_multiplier, sample_size=clients,
                                            population_size=clients), rounds)
    return accountant.get_epsilon(privacy.delta)


def clip_when_asked(message: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod when the server sent a clipping norm (DP on); else pass through."""
    configs = list(message.content.config_records.values())
    if configs and KEY_CLIPPING_NORM in configs[0]:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)
