// Every rank of a run must train the same model the same way: ranks started with different
// configurations would drift apart silently (a learning rate, a seed) or fail much later in a
// collective (a shape). At the rendezvous the ranks compare their resolved configurations and fail at
// once, naming the first key that differs and its value on each rank.
#pragma once
#include "comm/communicator.h"
#include "train/config.h"

namespace scmoe {

// Keys that may differ between the ranks of one run (they change no computation nor collective).
bool key_may_differ_per_rank(const std::string& key);

// Collective over `comm`'s ranks; throws scmoe::Error on every rank when they disagree.
void check_ranks_agree(const Config& cfg, Communicator& comm);

}  // namespace scmoe
