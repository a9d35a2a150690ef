import DivvyProtocol
import DivvyShm

/// Mediated clients' requests: `MediatedLedger` decides each one (limits, who holds what), this file makes the
/// heap calls through the daemon's participant and reports them back to the ledger. A refused request or a failed
/// heap call changes nothing. Loop thread only.
extension DivvyServer {
    /// The daemon participant's allocate, without reference counting (see `daemonParticipantRef`).
    @inline(__always)
    private func daemonAllocate(_ size: Int) throws(SharedHeapError) -> SharedHeapHandle {
        guard let reference = daemonParticipantRef else { preconditionFailure("the daemon's participant is gone") }
        // Safe: `participant` keeps it alive while the loop runs.
        return try reference._withUnsafeGuaranteedRef { participant in
            Result { () throws(SharedHeapError) in try participant.allocate(size) }
        }.get()
    }

    /// The daemon participant's free, without reference counting.
    @inline(__always)
    func daemonFree(_ handle: SharedHeapHandle) throws(SharedHeapError) -> Bool {
        guard let reference = daemonParticipantRef else { preconditionFailure("the daemon's participant is gone") }
        // Safe: `participant` keeps it alive while the loop runs.
        return try reference._withUnsafeGuaranteedRef { participant in
            Result { () throws(SharedHeapError) in try participant.free(handle) }
        }.get()
    }

    var daemonParticipant: SharedHeap.Participant {
        guard let participant else { preconditionFailure("the daemon's participant is gone while serving") }
        return participant
    }

    private func classSize(for size: UInt64) throws(ServiceError) -> Int {
        guard size > 0, let last = classSizes.last, size <= UInt64(heap.largestBlockSize) else {
            throw ServiceError(
                .unsupportedSize, "cannot allocate \(size) bytes: sizes 1…\(heap.largestBlockSize) are supported")
        }
        // Above the largest class: an extent of the heap's extent area, in whole units.
        if size > UInt64(last) {
            let unit = UInt64(heap.extentUnitSize)
            return Int((size + unit - 1) / unit * unit)
        }
        // Binary search: the first class at least `size` (the classes ascend).
        var low = 0
        var high = classSizes.count - 1
        while low < high {
            let middle = (low + high) / 2
            if UInt64(classSizes[middle]) >= size { high = middle } else { low = middle + 1 }
        }
        return classSizes[low]
    }

    /// The ledger's refusal of `count` more blocks of `blockSize` bytes for the session, thrown.
    private func checkLimits(_ session: Session, adding count: Int, of blockSize: Int) throws(ServiceError) {
        if let refusal = ledger.refusal(
            client: session.id, adding: count, of: blockSize, to: session.account,
            leasedPages: session.pageAllowance, quota: quota)
        {
            throw refusal
        }
    }

    func allocate(_ session: Session, size: UInt64) throws(ServiceError) -> (SharedHeapHandle, Int) {
        let blockSize = try classSize(for: size)
        try checkLimits(session, adding: 1, of: blockSize)
        let handle: SharedHeapHandle
        do throws(SharedHeapError) {
            handle = try daemonAllocate(Int(size))
        } catch {
            throw explainAllocationFailure(error, blockSize: blockSize)
        }
        ledger.allocated(handle, blockSize: blockSize, to: &session.account)
        metrics.count(.allocation)
        return (handle, blockSize)
    }

    func allocateBatch(_ session: Session, size: UInt64, count: Int) throws(ServiceError) -> Message {
        let blockSize = try classSize(for: size)
        try checkLimits(session, adding: count, of: blockSize)
        var handles: [SharedHeapHandle] = []
        handles.reserveCapacity(count)
        for _ in 0..<count {
            do throws(SharedHeapError) {
                handles.append(try daemonAllocate(Int(size)))
            } catch {
                // All or nothing: give back what this batch took.
                for handle in handles { _ = try? daemonParticipant.free(handle) }
                throw explainAllocationFailure(error, blockSize: blockSize)
            }
        }
        // The account is moved out of the session for the loop, so its table is uniquely referenced (no copy) and
        // mutated without a dynamic exclusivity check per block.
        var account = session.account
        session.account = MediatedAccount()
        ledger.allocated(handles, blockSize: blockSize, to: &account)
        session.account = account
        metrics.count(.allocation, by: count)
        return .allocatedBatch(blockSize: UInt64(blockSize), handles: handles.map(\.wire))
    }

    /// Drops one of the session's holdings of `handle`; true when the block went back to the heap.
    func free(_ session: Session, _ handle: SharedHeapHandle) throws(ServiceError) -> Bool {
        let released = try free(handle, from: &session.account)
        dropShareTokens(of: session.id, for: handle, account: session.account)
        return released
    }

    /// `free(_:_:)` with the session's account passed in (a batch moves it out of the session).
    private func free(_ handle: SharedHeapHandle, from account: inout MediatedAccount) throws(ServiceError) -> Bool {
        switch ledger.free(handle, from: &account) {
        case .notHeld:
            throw diagnoseForeign(handle)
        case .dropped:
            return false
        case .freeInHeap:
            let released: Bool
            do throws(SharedHeapError) {
                released = try daemonFree(handle)
            } catch {
                throw ServiceError(error)
            }
            ledger.freedInHeap(handle, from: &account)
            return released
        }
    }

    func freeBatch(_ session: Session, _ handles: [WireHandle]) -> Message {
        var statuses: [FreedStatus] = []
        statuses.reserveCapacity(handles.count)
        var freed = 0
        // The account is moved out of the session for the loop (see allocateBatch).
        var account = session.account
        session.account = MediatedAccount()
        for handle in handles {
            do throws(ServiceError) {
                statuses.append(try free(SharedHeapHandle(handle), from: &account) ? .released : .stillHeld)
                dropShareTokens(of: session.id, for: SharedHeapHandle(handle), account: account)
                freed += 1
            } catch {
                metrics.failure(error.code)
                statuses.append(FreedStatus(error: error.code))
            }
        }
        session.account = account
        metrics.count(.free, by: freed)
        return .freedBatch(statuses: statuses)
    }

    /// The precise error for a handle this session does not hold: bad offsets, stale or double frees, or a
    /// block someone else holds. Never changes anything: the daemon's participant is asked to free only a block
    /// that is not allocated at all (so its free fails, reporting why) — a block it holds for another session is
    /// never passed to it here.
    private func diagnoseForeign(_ handle: SharedHeapHandle) -> ServiceError {
        if handle.isZero { return ServiceError.handleZero }
        do throws(SharedHeapError) {
            _ = try heap.pointer(for: handle)
            return ServiceError(.notHolder, "this client does not hold \(handle); adopt it first")
        } catch {
            // Not allocated, so the daemon's participant cannot be holding it for anyone: asking it to free the
            // handle changes nothing and names the problem (double free vs stale).
            guard error.code == .staleHandle else { return ServiceError(error) }
            do throws(SharedHeapError) {
                _ = try daemonParticipant.free(handle)
                return ServiceError(.internalError, "freeing \(handle) should have failed")
            } catch let freeError {
                return freeError.code == .notHeld ? ServiceError(error) : ServiceError(freeError)
            }
        }
    }

    func adopt(_ session: Session, _ handle: SharedHeapHandle, token: UInt64) throws(ServiceError) -> Int {
        guard !handle.isZero else { throw ServiceError.handleZero }
        let blockSize: Int
        do throws(SharedHeapError) {
            blockSize = try heap.blockSize(of: handle)
        } catch {
            throw ServiceError(error)
        }
        // Handles are predictable: only a live share token for this handle lets a client in (ShareTokenTable).
        try checkShareToken(token, for: handle)
        let step = ledger.adopt(
            handle, blockSize: blockSize, daemonHolds: participant?.holds(handle) ?? false, client: session.id,
            to: &session.account, leasedPages: session.pageAllowance, quota: quota)
        switch step {
        case .refuse(let error):
            throw error
        case .counted:
            break
        case .adoptInHeap:
            do throws(SharedHeapError) {
                try daemonParticipant.adopt(handle)
            } catch {
                throw ServiceError(error)
            }
            ledger.adoptedInHeap(handle, blockSize: blockSize, to: &session.account)
        }
        shareTokens.redeem(token)
        metrics.count(.adoption)
        return blockSize
    }

    func share(_ session: Session, _ handle: SharedHeapHandle) throws(ServiceError) -> SharedInfo {
        guard !handle.isZero else { throw ServiceError.handleZero }
        let holderCount: Int
        do throws(SharedHeapError) {
            holderCount = try heap.holderCount(of: handle)
        } catch {
            throw ServiceError(error)
        }
        let holdsThroughDaemon = session.account[handle] != nil
        let holdsDirectly = session.participant.map { heap.holds(participant: $0, handle) } ?? false
        guard holdsThroughDaemon || holdsDirectly else {
            throw ServiceError(.notHolder, "this client does not hold \(handle): only a holder can share it")
        }
        let daemonHoldsIt = daemonParticipant.holds(handle)
        let directHolders = holderCount - (daemonHoldsIt ? 1 : 0)
        let mediatedHolders = ledger.mediatedHolders(of: handle, daemonHolds: daemonHoldsIt)
        let blockSize = (try? heap.blockSize(of: handle)) ?? 0
        let token = try issueShareToken(session, for: handle)
        return SharedInfo(
            handle: handle.wire, offset: UInt64(handle.dataOffset), blockSize: UInt64(blockSize),
            holders: UInt32(directHolders + mediatedHolders), token: token)
    }

    func stats(for session: Session) -> ClientStats {
        let usage = recentHeapUsage()
        let used = usage.bytesInUse
        return ClientStats(
            bytesHeld: UInt64(session.bytesHeld), blocksHeld: UInt64(session.blocksHeld),
            quotaBytes: UInt64(configuration.effectiveQuotaBytes), pageAllowance: UInt32(session.pageAllowance),
            heapBytesUsed: UInt64(used), heapBytesFree: UInt64(max(0, heapCapacity - used)),
            clients: UInt32(sessions.count))
    }
}
