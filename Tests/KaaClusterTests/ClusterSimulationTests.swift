import KaaCluster
import KaaClusterSimulation
import KaaCore
import Testing

/// The real state machine, many instances, a simulated network; time driven event by event.
@Suite struct ClusterSimulationTests {
    /// Starts `n` nodes through node 0, `spacing` apart.
    func form(_ sim: ClusterSimulation, n: Int, spacing: Duration) {
        for _ in 0..<n { sim.addNode() }
        let t0 = sim.now
        sim.start(0, seeds: [])
        for i in 1..<n { sim.start(i, seeds: [Int(i) % 3 == 0 ? 0 : max(0, i - 1)], at: t0 + spacing * i) }
        sim.run(until: t0 + spacing * n)
    }

    @Test func smallClusterConvergesThroughTheCodec() {
        var network = ClusterSimulation.Network()
        network.roundTripCodec = true
        let sim = ClusterSimulation(seed: 1, network: network)
        form(sim, n: 12, spacing: .milliseconds(100))
        #expect(sim.run(step: .milliseconds(500), limit: .seconds(30)) { sim.converged(Array(0..<12)) })
    }

    @Test func thousandNodesConvergeAfterJoining() {
        let sim = ClusterSimulation(seed: 1000)
        form(sim, n: 1000, spacing: .milliseconds(5))
        let all = Array(0..<1000)
        let ok = sim.run(step: .seconds(2), limit: .seconds(180)) { sim.converged(all) }
        #expect(ok, "1,000 nodes did not converge within 180 simulated seconds")
    }

    @Test func crashedNodeIsDeclaredDeadByEveryOtherWithinTheBound() {
        for seed in UInt64(1)...5 {
            let sim = ClusterSimulation(seed: seed)
            let n = 20
            form(sim, n: n, spacing: .milliseconds(50))
            #expect(sim.run(step: .seconds(1), limit: .seconds(60)) { sim.converged(Array(0..<n)) })
            sim.run(for: .seconds(5))
            let victim = Int(seed) * 3 % n
            let victimID = sim.id(of: victim)
            var declaredBy = Set<Int>()
            var falseDead = 0
            sim.onEvent = { node, event, _ in
                guard case .dead(let m) = event else { return }
                if m.id == victimID { declaredBy.insert(node) } else { falseDead += 1 }
            }
            sim.crash(victim)
            // Bound: one full probe round to reach it, one period to fail, the maximum
            // suspicion timeout (no confirmations), and a few periods of dissemination.
            let s = SWIMSettings()
            let minimum = s.probeInterval * (s.suspicionMultiplier * 1.30103)  // log10(20)
            let bound = s.probeInterval * (n + 1) + minimum * s.suspicionMaxMultiplier + s.probeInterval * 10
            sim.run(for: bound)
            #expect(declaredBy.count == n - 1, "seed \(seed): \(declaredBy.count) of \(n - 1) declared node \(victim) dead within \(bound)")
            #expect(falseDead == 0)
            #expect(sim.converged(Array(0..<n).filter { $0 != victim }))
        }
    }

    @Test func noHealthyNodeIsDeclaredDeadUnderTenPercentLoss() {
        var network = ClusterSimulation.Network()
        network.loss = 0.10
        let sim = ClusterSimulation(seed: 10, network: network)
        let n = 40
        form(sim, n: n, spacing: .milliseconds(50))
        #expect(sim.run(step: .seconds(1), limit: .seconds(120)) { sim.converged(Array(0..<n)) })
        var dead: [MembershipEvent] = []
        var suspicions = 0
        sim.onEvent = { _, event, _ in
            if case .dead = event { dead.append(event) }
            if case .suspect = event { suspicions += 1 }
        }
        sim.run(for: .seconds(180))
        #expect(dead.isEmpty, "healthy nodes declared dead: \(dead.prefix(5))")
        #expect(suspicions > 0, "10% loss should cause (refuted) suspicions; the test would prove nothing")
        #expect(sim.converged(Array(0..<n)))
    }

    @Test func pausedNodeRefutesAfterResuming() {
        let sim = ClusterSimulation(seed: 3)
        let n = 10
        form(sim, n: n, spacing: .milliseconds(50))
        #expect(sim.run(step: .seconds(1), limit: .seconds(60)) { sim.converged(Array(0..<n)) })
        let before = sim.nodes[4].instance.incarnation
        sim.pause(4)
        sim.run(for: .seconds(30))
        let id = sim.id(of: 4)
        #expect((0..<n).filter { $0 != 4 }.allSatisfy { sim.nodes[$0].instance.member(id)?.status == .dead })
        sim.resume(4)
        #expect(sim.run(step: .seconds(1), limit: .seconds(90)) { sim.converged(Array(0..<n)) })
        #expect(sim.nodes[4].instance.incarnation > before)
    }

    @Test func partitionHealsAndViewsReconverge() {
        let sim = ClusterSimulation(seed: 7)
        let n = 16
        form(sim, n: n, spacing: .milliseconds(50))
        let all = Array(0..<n)
        #expect(sim.run(step: .seconds(1), limit: .seconds(60)) { sim.converged(all) })
        sim.partition { $0 < 6 ? 1 : 2 }
        let a = Array(0..<6), b = Array(6..<n)
        #expect(sim.run(step: .seconds(1), limit: .seconds(120)) { sim.converged(a) && sim.converged(b) })
        #expect(sim.nodes[0].instance.member(sim.id(of: 10))?.status == .dead)
        sim.heal()
        #expect(sim.run(step: .seconds(1), limit: .seconds(300)) { sim.converged(all) }, "views did not reconverge after the partition healed")
    }

    @Test func gracefulLeaveIsSeenAsLeft() {
        let sim = ClusterSimulation(seed: 11)
        let n = 12
        form(sim, n: n, spacing: .milliseconds(50))
        #expect(sim.run(step: .seconds(1), limit: .seconds(60)) { sim.converged(Array(0..<n)) })
        var left = Set<Int>(), dead = 0
        let id = sim.id(of: 5)
        sim.onEvent = { node, event, _ in
            if case .left(let m) = event, m.id == id { left.insert(node) }
            if case .dead = event { dead += 1 }
        }
        sim.leave(5)
        sim.run(for: .seconds(1))
        sim.crash(5)  // the process exits after announcing
        sim.run(for: .seconds(20))
        #expect(left.count == n - 1)
        #expect(dead == 0)
    }

    @Test func metadataUpdateReachesEveryNode() {
        let sim = ClusterSimulation(seed: 12)
        let n = 30
        form(sim, n: n, spacing: .milliseconds(20))
        #expect(sim.run(step: .seconds(1), limit: .seconds(60)) { sim.converged(Array(0..<n)) })
        sim.updateMetadata(3) { $0.capacity.gpuCount = 4 }
        let id = sim.id(of: 3)
        #expect(sim.run(step: .milliseconds(200), limit: .seconds(20)) {
            (0..<n).allSatisfy { $0 == 3 || sim.nodes[$0].instance.member(id)?.info.capacity.gpuCount == 4 }
        })
    }

    @Test func runsAreDeterministic() {
        func trace(seed: UInt64) -> [String] {
            var network = ClusterSimulation.Network()
            network.loss = 0.05
            let sim = ClusterSimulation(seed: seed, network: network)
            var log: [String] = []
            sim.onEvent = { node, event, time in log.append("\(time) \(node) \(event)") }
            form(sim, n: 8, spacing: .milliseconds(30))
            sim.run(for: .seconds(10))
            sim.crash(2)
            sim.run(for: .seconds(10))
            return log
        }
        let a = trace(seed: 99)
        #expect(a == trace(seed: 99))
        #expect(a.count > 50)
    }
}
