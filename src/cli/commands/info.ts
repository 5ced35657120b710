import type { Command } from 'commander'
import { ApiClient } from '../../api/index.ts'
import { runDoctor } from '../../doctor/index.ts'
import { globals } from '../main.ts'
import { humanBytes, humanDuration, printJson, printTable, shortId } from '../output.ts'

export function registerInfoCommands(program: Command): void {
  program
    .command('nodes')
    .description('the nodes of the cluster as this node sees them')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const nodes = await new ApiClient(g.socket).nodes()
      if (g.json) return printJson(nodes)
      printTable(
        ['NAME', 'ID', 'STATE', 'ADDRESSES', 'ARCH', 'CPUS', 'MEMORY', 'VERSION', 'UPTIME'],
        nodes.map((n) => [
          n.self ? `${n.name} (self)` : n.name,
          shortId(n.id),
          n.state,
          n.addresses.slice(0, 2).join(',') + (n.addresses.length > 2 ? ',…' : ''),
          n.arch,
          n.cpus,
          humanBytes(n.memory),
          n.version,
          humanDuration(n.uptime),
        ]),
      )
    })

  program
    .command('status')
    .description('this node: identity, cluster, peers, counters')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const s = await new ApiClient(g.socket).status()
      if (g.json) return printJson(s)
      const lines: Array<[string, string]> = [
        ['Node', `${s.name} (${s.id})`],
        ['Cluster', s.cluster],
        ['Version', `${s.version}, pid ${s.pid}, up ${humanDuration(s.uptime)}`],
        ['Data', s.dataDir],
        ['Addresses', s.addresses.join(' ') || '(none)'],
        ['Nodes', `${s.nodes.alive} alive, ${s.nodes.suspect} suspect, ${s.nodes.dead} dead`],
        ['Peers', `${s.mesh.connectedPeers} connected, ${s.mesh.knownPeers} known`],
        [
          'Dials failed',
          `${s.mesh.dialFailures} (${s.mesh.handshakeFailures} handshake failures: another cluster?)`,
        ],
        [
          'Heartbeats',
          `${s.membership.heartbeatsReceived} received, ${s.membership.heartbeatsDropped} dropped`,
        ],
        ['Memory', `${humanBytes(s.memory.rss)} RSS, ${humanBytes(s.memory.heapUsed)} heap`],
      ]
      for (const [k, v] of lines) process.stdout.write(`${`${k}:`.padEnd(14)}${v}\n`)
    })

  program
    .command('doctor')
    .description('what this host can and cannot do for km1s, and what to install or enable')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const report = await runDoctor({ dataDir: g.dataDir })
      if (g.json) printJson(report)
      else {
        printTable(
          ['CHECK', 'RESULT', 'DETAIL'],
          report.checks.map((c) => [c.name, c.level, c.detail]),
        )
        const fixes = report.checks.filter((c) => c.fix)
        if (fixes.length > 0) {
          process.stdout.write('\nTo fix:\n')
          for (const c of fixes) process.stdout.write(`  ${c.name}: ${c.fix}\n`)
        }
      }
      if (!report.ok) process.exitCode = 1
    })
}
