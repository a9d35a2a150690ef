// Boost.Interprocess managed_shared_memory, the same workloads as Divvy's SharedHeap benchmarks
// (Benchmarks/Benchmarks/SharedHeap/SharedHeap.swift): samples of 100 rounds x 1000 operations; pairs (allocate
// then free at once) and bursts (1000 allocations, then 1000 frees); 64 B and the mixed 16 B-1 KiB sequence.
// Allocators: the segment's default (rbtree best fit with a mutex: segment.allocate / deallocate) and, for the
// fixed 64 B size, cached_node_allocator (per-instance cache of nodes over a shared node pool) through its fastest
// entry points, allocate_one / deallocate_one. (Boost 1.74's allocate(1) is the version-2 generic path: it bypasses
// the node cache and takes the segment's mutex, so comparing with it would flatter us.)
// Prints one line per benchmark: "name<TAB>ns/op (median of samples)<TAB>p25<TAB>p75".
//
// Built and run by run.sh; shm-vs-boost.sh compares it with ours.
#include <boost/interprocess/allocators/cached_node_allocator.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <unistd.h>
#include <vector>

namespace bip = boost::interprocess;

static const int kBatch = 1000;
static const int kRounds = 100;
static const int kOps = kBatch * kRounds;

static volatile void *sink;

struct Sixty4 { char bytes[64]; };

template <typename Body>
static void measure(const char *name, Body body) {
    // Warm up, then sample for about 2 s (at most 200 samples, at least 10).
    for (int i = 0; i < 3; ++i) body();
    std::vector<double> samples;
    auto begin = std::chrono::steady_clock::now();
    while (samples.size() < 200) {
        auto t0 = std::chrono::steady_clock::now();
        body();
        auto t1 = std::chrono::steady_clock::now();
        samples.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / kOps);
        if (samples.size() >= 10 && t1 - begin > std::chrono::seconds(2)) break;
    }
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) { return samples[size_t(q * (samples.size() - 1))]; };
    std::printf("%s\t%.2f\t%.2f\t%.2f\n", name, at(0.5), at(0.25), at(0.75));
    std::fflush(stdout);
}

int main() {
    std::string name = "divvy-boost-bench-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), 64u << 20);
        std::vector<size_t> mixed(kBatch);
        for (int i = 0; i < kBatch; ++i) mixed[i] = 16 + (size_t(i) * 7919) % 1008;
        std::vector<void *> blocks(kBatch);

        measure("boost default pair (64 B)", [&] {
            for (int r = 0; r < kRounds; ++r)
                for (int i = 0; i < kBatch; ++i) {
                    void *p = segment.allocate(64);
                    sink = p;
                    segment.deallocate(p);
                }
        });
        measure("boost default pair (mixed 16 B-1 KiB)", [&] {
            for (int r = 0; r < kRounds; ++r)
                for (int i = 0; i < kBatch; ++i) {
                    void *p = segment.allocate(mixed[i]);
                    sink = p;
                    segment.deallocate(p);
                }
        });
        measure("boost default burst (64 B)", [&] {
            for (int r = 0; r < kRounds; ++r) {
                for (int i = 0; i < kBatch; ++i) blocks[i] = segment.allocate(64);
                for (int i = 0; i < kBatch; ++i) segment.deallocate(blocks[i]);
            }
        });
        measure("boost default burst (mixed 16 B-1 KiB)", [&] {
            for (int r = 0; r < kRounds; ++r) {
                for (int i = 0; i < kBatch; ++i) blocks[i] = segment.allocate(mixed[i]);
                for (int i = 0; i < kBatch; ++i) segment.deallocate(blocks[i]);
            }
        });

        typedef bip::cached_node_allocator<Sixty4, bip::managed_shared_memory::segment_manager> Cached;
        Cached cached(segment.get_segment_manager());
        std::vector<Cached::pointer> nodes(kBatch);
        measure("boost cached_node_allocator pair (64 B)", [&] {
            for (int r = 0; r < kRounds; ++r)
                for (int i = 0; i < kBatch; ++i) {
                    Cached::pointer p = cached.allocate_one();
                    sink = bip::ipcdetail::to_raw_pointer(p);
                    cached.deallocate_one(p);
                }
        });
        measure("boost cached_node_allocator burst (64 B)", [&] {
            for (int r = 0; r < kRounds; ++r) {
                for (int i = 0; i < kBatch; ++i) nodes[i] = cached.allocate_one();
                for (int i = 0; i < kBatch; ++i) cached.deallocate_one(nodes[i]);
            }
        });
    }
    bip::shared_memory_object::remove(name.c_str());
    return 0;
}
