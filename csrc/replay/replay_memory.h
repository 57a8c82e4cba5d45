// Buffer reuse inside one replay of a recorded graph (maml_ext/algorithms/whole.py).
#pragma once

#include <cstdint>
#include <utility>

namespace maml_ext::replay {

// Starts (or nests) a replay scope: from now on, CPU blocks of at least 64 KiB freed while a
// scope is open are kept and handed to the next request of the same size. False when the
// allocator could not be installed (another one with a higher priority is in place): nothing
// is reused then, and leave() must still be called.
bool enter();
// Ends a scope; the outermost one frees every kept block (nothing is held between replays).
void leave();
// (blocks handed out again, blocks allocated fresh) inside scopes since the process started.
std::pair<int64_t, int64_t> stats();

}  // namespace maml_ext::replay
