// Boost.Interprocess managed_shared_memory, the same workloads as Divvy's SharedHeap benchmarks
// (Benchmarks/Benchmarks/SharedHeap/SharedHeap.swift): samples of 100 rounds x 1000 operations; pairs (allocate
// then free at once) and bursts (1000 allocations, then 1000 frees); 64 B and the mixed 16 B-1 KiB sequence.
// Allocators: the segment's default (rbtree best fit with a mutex: segment.allocate / deallocate) and, for the
// fixed 64 B size, cached_node_allocator (per-instance cache of nodes over a shared node pool) through its fastest
// entry points, allocate_one / deallocate_one. (Boost 1.74's allocate(1) is the version-2 generic path: it bypasses
// the node cache and takes the segment's mutex, so comparing with it would flatter us.)
// Prints one line per benchmark: "name<TAB>ns/op (median of samples)<TAB>p25<TAB>p75".
//
// Other modes (issue 11's figures; shm-targets.sh passes their output to the Swift drivers with --boost):
//   pairs [SAMPLES]      glibc malloc(64)+free, cached_node_allocator allocate_one/deallocate_one and the default
//                        allocate/deallocate of 64 B, sampled round-robin like direct-ratios (100,000 pairs a
//                        sample); "pairs<TAB>name<TAB>p50<TAB>p25<TAB>p75" (ns per pair).
//   metadata BYTES...    for each segment size and 16 B, 64 B, 4 KiB, 1 MiB: N = size / 4 / block blocks from a fresh
//                        segment (default allocator, then cached_node_allocator), overhead per block =
//                        (get_free_memory() before - after) / N - block;
//                        "metadata<TAB>segment<TAB>block<TAB>default|cached<TAB>N<TAB>overhead bytes".
//   fragmentation BYTES SLOTS STEPS SEED MAX SNAPSHOTS
//                        shm-fragmentation's seeded sequence on a segment of BYTES (default allocator);
//                        "frag<TAB>step<TAB>live blocks<TAB>requested<TAB>in use (size - free)<TAB>extent (highest
//                        live byte from the segment's start)<TAB>failures".
//
// Built and run by run.sh (arguments pass through); shm-vs-boost.sh compares the timing mode with ours.
#include <boost/interprocess/allocators/cached_node_allocator.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unistd.h>
#include <vector>

namespace bip = boost::interprocess;

static const int kBatch = 1000;
static const int kRounds = 100;
static const int kOps = kBatch * kRounds;

static volatile void *sink;
// A volatile pointer variable (sink is a pointer to volatile): stores to it cannot be dropped, so the compiler may
// not elide a malloc+free pair whose pointer it keeps.
static void *volatile keep;

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

// --- pairs ---------------------------------------------------------------------------------------------------
template <typename Body>
static double timePairs(long pairs, Body body) {
    auto t0 = std::chrono::steady_clock::now();
    body(pairs);
    auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / pairs;
}

static int pairsMode(int samples) {
    const long pairs = 100000;
    std::string name = "divvy-boost-pairs-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), 64u << 20);
        typedef bip::cached_node_allocator<Sixty4, bip::managed_shared_memory::segment_manager> Cached;
        Cached cached(segment.get_segment_manager());
        auto glibc = [&](long n) {
            for (long i = 0; i < n; ++i) {
                void *p = std::malloc(64);
                keep = p;
                std::free(p);
            }
        };
        auto node = [&](long n) {
            for (long i = 0; i < n; ++i) {
                Cached::pointer p = cached.allocate_one();
                sink = bip::ipcdetail::to_raw_pointer(p);
                cached.deallocate_one(p);
            }
        };
        auto fallback = [&](long n) {
            for (long i = 0; i < n; ++i) {
                void *p = segment.allocate(64);
                sink = p;
                segment.deallocate(p);
            }
        };
        const char *names[3] = {"glibc malloc(64) + free", "Boost cached_node_allocator<64 B> allocate_one + deallocate_one",
                                "Boost managed_shared_memory allocate(64) + deallocate (default)"};
        std::vector<double> results[3];
        glibc(pairs), node(pairs), fallback(pairs);  // warm
        for (int s = 0; s < samples; ++s) {
            results[0].push_back(timePairs(pairs, glibc));
            results[1].push_back(timePairs(pairs, node));
            results[2].push_back(timePairs(pairs, fallback));
        }
        for (int r = 0; r < 3; ++r) {
            auto &v = results[r];
            std::sort(v.begin(), v.end());
            auto at = [&](double q) { return v[size_t(q * (v.size() - 1))]; };
            std::printf("pairs\t%s\t%.2f\t%.2f\t%.2f\n", names[r], at(0.5), at(0.25), at(0.75));
        }
    }
    bip::shared_memory_object::remove(name.c_str());
    return 0;
}

// --- metadata ------------------------------------------------------------------------------------------------
template <size_t S> struct Blob { char bytes[S]; };

static void metadataDefault(size_t segmentBytes, size_t block) {
    std::string name = "divvy-boost-meta-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), segmentBytes);
        size_t n = std::max<size_t>(1, segmentBytes / 4 / block), done = 0;
        size_t before = segment.get_free_memory();
        for (; done < n; ++done)
            if (!segment.allocate(block, std::nothrow)) break;
        size_t after = segment.get_free_memory();
        std::printf("metadata\t%zu\t%zu\tdefault\t%zu\t%.2f\n", segmentBytes, block, done,
                    double(before - after) / double(done) - double(block));
        std::fflush(stdout);
    }
    bip::shared_memory_object::remove(name.c_str());
}

template <size_t S> static void metadataCached(size_t segmentBytes) {
    std::string name = "divvy-boost-meta-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), segmentBytes);
        typedef bip::cached_node_allocator<Blob<S>, bip::managed_shared_memory::segment_manager> Cached;
        Cached cached(segment.get_segment_manager());
        size_t n = std::max<size_t>(1, segmentBytes / 4 / S), done = 0;
        size_t before = segment.get_free_memory();
        try {
            for (; done < n; ++done) sink = bip::ipcdetail::to_raw_pointer(cached.allocate_one());
        } catch (const bip::bad_alloc &) {
        }
        size_t after = segment.get_free_memory();
        std::printf("metadata\t%zu\t%zu\tcached\t%zu\t%.2f\n", segmentBytes, S, done,
                    double(before - after) / double(done) - double(S));
        std::fflush(stdout);
    }
    bip::shared_memory_object::remove(name.c_str());
}

static int metadataMode(int argc, char **argv) {
    for (int i = 2; i < argc; ++i) {
        size_t bytes = std::strtoull(argv[i], nullptr, 10);
        for (size_t block : {size_t(16), size_t(64), size_t(4096), size_t(1) << 20}) metadataDefault(bytes, block);
        metadataCached<16>(bytes);
        metadataCached<64>(bytes);
        metadataCached<4096>(bytes);
        metadataCached<(1 << 20)>(bytes);
    }
    return 0;
}

// --- fragmentation ---------------------------------------------------------------------------------------------
struct SplitMix {  // as in Sources/ShmFragmentation/main.swift
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

static int fragmentationMode(int argc, char **argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: fragmentation BYTES SLOTS STEPS SEED MAX SNAPSHOTS\n");
        return 2;
    }
    size_t bytes = std::strtoull(argv[2], nullptr, 10);
    long slots = std::atol(argv[3]), steps = std::atol(argv[4]);
    uint64_t seed = std::strtoull(argv[5], nullptr, 10);
    size_t top = std::strtoull(argv[6], nullptr, 10);
    long snapshots = std::atol(argv[7]);
    uint64_t octaves = uint64_t(__builtin_ctzll(top) - 4);
    SplitMix random{seed};
    auto randomSize = [&]() -> size_t {
        int octave = 4 + int(random.next() % octaves);
        return (size_t(1) << octave) + size_t(random.next() & ((uint64_t(1) << octave) - 1));
    };
    std::string name = "divvy-boost-frag-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), bytes);
        std::vector<std::pair<void *, size_t>> live(slots, {nullptr, 0});
        size_t requested = 0;
        long liveBlocks = 0, failures = 0;
        auto place = [&](long slot, size_t size) {
            void *p = segment.allocate(size, std::nothrow);
            if (!p) {
                ++failures;
                return;
            }
            live[slot] = {p, size};
            requested += size;
            ++liveBlocks;
        };
        auto snapshot = [&](long step) {
            // The extent: the highest byte of a live block, from the segment's start (what a heap that cannot
            // move blocks must keep mapped), beside what the segment counts as in use.
            char *base = static_cast<char *>(segment.get_address());
            size_t extent = 0;
            for (auto &block : live)
                if (block.first) extent = std::max(extent, size_t(static_cast<char *>(block.first) - base) + block.second);
            std::printf("frag\t%ld\t%ld\t%zu\t%zu\t%zu\t%ld\n", step, liveBlocks, requested,
                        segment.get_size() - segment.get_free_memory(), extent, failures);
        };
        for (long slot = 0; slot < slots; ++slot) place(slot, randomSize());
        snapshot(0);
        long every = std::max(1L, steps / snapshots);
        for (long step = 1; step <= steps; ++step) {
            long slot = long(random.next() % uint64_t(slots));
            if (live[slot].first) {
                segment.deallocate(live[slot].first);
                requested -= live[slot].second;
                --liveBlocks;
                live[slot] = {nullptr, 0};
            }
            if (random.next() % 4 != 0) place(slot, randomSize());
            if (step % every == 0 || step == steps) snapshot(step);
        }
    }
    bip::shared_memory_object::remove(name.c_str());
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && std::strcmp(argv[1], "pairs") == 0) return pairsMode(argc >= 3 ? std::atoi(argv[2]) : 51);
    if (argc >= 2 && std::strcmp(argv[1], "metadata") == 0) return metadataMode(argc, argv);
    if (argc >= 2 && std::strcmp(argv[1], "fragmentation") == 0) return fragmentationMode(argc, argv);
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
