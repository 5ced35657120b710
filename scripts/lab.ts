// scripts/lab: the network test lab for people (docs/lab.md). `up N` builds a lab of N nodes, optionally
// with a km1s agent in each, and stays in the foreground reading commands from stdin until Ctrl-C or `down`.
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'
import { promisify } from 'node:util'
import { KM1S, listenAddr } from '../test/lab/cluster.ts'
import { createLab, type Lab, type LabNode, sweepStaleLabs } from '../test/lab/lab.ts'

const execFileAsync = promisify(execFile)
const ROOT = path.resolve(import.meta.dirname, '..')
const BUNDLE = path.join(ROOT, 'dist', 'km1s.mjs')

const USAGE = `usage: scripts/lab up N [--agents] [--name TAG]   build a lab of N nodes and stay in the foreground
       scripts/lab sweep                          remove what labs of dead processes left behind
       scripts/lab help

--agents runs 'km1s init' on n1, 'km1s join' on the others and 'km1s agent' on every node
(needs 'npm run build'). Needs root.`

const COMMANDS = `commands (nodes as 1 or n1; lists as 1,2,3):
  partition A B        cut the nodes of list A from those of list B, e.g. partition 1,2 3,4,5
  heal                 remove all partitions
  loss P [NODES]       drop P % of frames from and to NODES (default: all); loss 0 removes it
  kill N [SIGNAL]      send SIGNAL (default SIGKILL) to node N's process and wait for it to exit
  restart N            stop node N's process (TERM, then KILL after 5 s) and start it again
  start N CMD...       start CMD in node N (output in its agent.log)
  exec N CMD...        run CMD in node N and print its output
  add                  add a node to the LAN (with --agents: it joins the cluster and runs an agent)
  status               nodes, their processes and the nftables rules of the bridge
  down                 take the lab down and exit (as Ctrl-C does)
  help                 this list`

interface Session {
  lab: Lab
  agents: boolean
  token: string
  /** The command each node was last started with, for `restart`. */
  commands: Map<LabNode, string[]>
}

function fail(message: string): never {
  throw new Error(message)
}

function nodeList(session: Session, spec: string | undefined): LabNode[] {
  if (!spec) fail('expected a list of nodes such as 1,2,3')
  return spec
    .split(',')
    .filter((ref) => ref !== '')
    .map((ref) => session.lab.node(/^\d+$/.test(ref) ? Number(ref) : ref))
}

function oneNode(session: Session, spec: string | undefined): LabNode {
  const [node, ...more] = nodeList(session, spec)
  if (!node || more.length > 0) fail(`expected one node, not ${spec}`)
  return node
}

async function km1sIn(node: LabNode, args: string[]): Promise<string> {
  const result = await node.exec([KM1S, '--data-dir', node.dataDir, ...args], { timeoutMs: 60_000 })
  if (result.code !== 0) {
    fail(`km1s ${args.join(' ')} on ${node.name} failed (exit ${result.code}): ${result.stderr.trim()}`)
  }
  return result.stdout
}

function agentCommand(node: LabNode): string[] {
  return [KM1S, '--data-dir', node.dataDir, 'agent', '--name', node.name, '--listen', listenAddr(node)]
}

async function startProcess(session: Session, node: LabNode, cmd: string[]): Promise<void> {
  await node.start(cmd)
  session.commands.set(node, cmd)
}

async function joinAndStart(session: Session, node: LabNode): Promise<void> {
  await km1sIn(node, ['join', session.token])
  await startProcess(session, node, agentCommand(node))
}

async function startAgents(session: Session): Promise<void> {
  const [first, ...rest] = session.lab.nodes
  if (!first) return
  const init = await km1sIn(first, ['init', '--name', first.name])
  session.token = init.trim().split('\n').at(-1)?.trim() ?? ''
  if (!session.token) fail(`km1s init printed no join token:\n${init}`)
  await startProcess(session, first, agentCommand(first))
  await Promise.all(rest.map((node) => joinAndStart(session, node)))
}

function printNodes(session: Session): void {
  const { lab } = session
  const rows = lab.nodes.map((node) => [
    node.name,
    node.address,
    node.netns,
    String(node.pid() ?? '-'),
    node.dataDir,
  ])
  const header = ['NODE', 'ADDRESS', 'NAMESPACE', 'PID', 'DATA DIR']
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]?.length ?? 0)))
  for (const row of [header, ...rows]) {
    console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  '))
  }
}

async function printRules(lab: Lab): Promise<void> {
  try {
    const { stdout } = await execFileAsync('nsenter', [
      `--net=/run/netns/${lab.lanNetns}`,
      '--',
      'nft',
      'list',
      'table',
      'bridge',
      'km1slab',
    ])
    console.log(stdout.trimEnd())
  } catch {
    console.log('no partition, no loss')
  }
}

function printHowTo(session: Session): void {
  const [first] = session.lab.nodes
  console.log(`\nlab ${session.lab.id} is up; its files are in ${session.lab.dir}`)
  if (first) {
    console.log(`  a shell on ${first.name}:   nsenter --net=/run/netns/${first.netns} bash`)
    console.log(`  its process's log:  tail -f ${first.dataDir}/agent.log`)
    if (session.agents) console.log(`  km1s as on ${first.name}: ${KM1S} --data-dir ${first.dataDir} nodes`)
  }
  console.log(`  the bridge:         nsenter --net=/run/netns/${session.lab.lanNetns} bridge link`)
  console.log(`\n${COMMANDS}\n`)
}

async function handle(session: Session, line: string): Promise<void> {
  const [command, ...args] = line.trim().split(/\s+/)
  const { lab } = session
  switch (command) {
    case undefined:
    case '':
      return
    case 'partition':
      if (args.length !== 2) fail('usage: partition A B, e.g. partition 1,2 3,4,5')
      await lab.partition(nodeList(session, args[0]), nodeList(session, args[1]))
      return
    case 'heal':
      await lab.heal()
      return
    case 'loss': {
      const percent = Number(args[0])
      if (args[0] === undefined || Number.isNaN(percent)) fail('usage: loss P [NODES]')
      await lab.loss(percent, args.length > 1 ? nodeList(session, args.slice(1).join(',')) : undefined)
      return
    }
    case 'kill': {
      const node = oneNode(session, args[0])
      if (node.pid() === undefined) fail(`${node.name} runs nothing`)
      await node.kill((args[1]?.toUpperCase().replace(/^(SIG)?/, 'SIG') ?? 'SIGKILL') as NodeJS.Signals)
      console.log(`${node.name}'s process has exited`)
      return
    }
    case 'restart': {
      const node = oneNode(session, args[0])
      const cmd = session.commands.get(node) ?? fail(`${node.name} has no command to restart: use start`)
      await node.stop()
      await startProcess(session, node, cmd)
      console.log(`${node.name} runs pid ${node.pid()}`)
      return
    }
    case 'start': {
      const node = oneNode(session, args[0])
      if (args.length < 2) fail('usage: start N CMD...')
      await startProcess(session, node, args.slice(1))
      console.log(`${node.name} runs pid ${node.pid()}; output in ${node.dataDir}/agent.log`)
      return
    }
    case 'exec': {
      const node = oneNode(session, args[0])
      if (args.length < 2) fail('usage: exec N CMD...')
      const result = await node.exec(args.slice(1))
      process.stdout.write(result.stdout)
      process.stderr.write(result.stderr)
      if (result.code !== 0) console.log(`(exit ${result.code})`)
      return
    }
    case 'add': {
      const node = await lab.addNode()
      if (session.agents) await joinAndStart(session, node)
      console.log(`added ${node.name} at ${node.address}, namespace ${node.netns}`)
      return
    }
    case 'status':
      printNodes(session)
      await printRules(lab)
      return
    case 'down':
      console.log('taking the lab down')
      await lab.down()
      return process.exit(0)
    case 'help':
      console.log(COMMANDS)
      return
    default:
      fail(`unknown command ${command}: type help`)
  }
}

async function up(args: string[]): Promise<void> {
  const count = Number(args[0])
  if (!Number.isInteger(count) || count < 1) fail(`scripts/lab up needs a number of nodes\n${USAGE}`)
  const agents = args.includes('--agents')
  const nameAt = args.indexOf('--name')
  const name = nameAt >= 0 ? (args[nameAt + 1] ?? fail('--name needs a tag')) : undefined
  if (agents && !fs.existsSync(BUNDLE))
    fail(`km1s is not built: run 'npm run build' in ${ROOT}, or leave out --agents`)

  const started = performance.now()
  const lab = await createLab({ nodes: count, name })
  const session: Session = { lab, agents, token: '', commands: new Map() }
  console.log(`built ${count} nodes in ${Math.round(performance.now() - started)} ms`)
  if (agents) {
    await startAgents(session)
    console.log(`agents started; join token: ${session.token}`)
  }
  printNodes(session)
  printHowTo(session)

  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, prompt: 'lab> ' })
  // On a terminal readline swallows Ctrl-C; hand it to the lab's SIGINT handler, which takes the lab down.
  rl.on('SIGINT', () => process.kill(process.pid, 'SIGINT'))
  process.once('SIGINT', () => console.log('\ntaking the lab down'))
  process.once('SIGTERM', () => console.log('taking the lab down'))
  // From a terminal: a prompt. From a pipe or a file: each command echoed, so that the output reads as a log.
  const interactive = process.stdin.isTTY === true
  let closed = false
  rl.on('close', () => {
    closed = true
  })
  if (interactive) rl.prompt()
  for await (const line of rl) {
    if (!interactive) console.log(`lab> ${line}`)
    try {
      await handle(session, line)
    } catch (error) {
      console.error(error instanceof Error ? error.message : String(error))
    }
    if (interactive && !closed) rl.prompt()
  }
  console.log('\nstdin is closed: the lab stays up until Ctrl-C or SIGTERM')
  setInterval(() => {}, 1 << 30)
}

async function main(args: string[]): Promise<void> {
  const [command, ...rest] = args
  if (command === 'help' || command === '--help' || command === '-h' || command === undefined) {
    console.log(USAGE)
    return
  }
  if (process.getuid?.() !== 0)
    fail('scripts/lab needs root (network namespaces, nftables): run it with sudo')
  if (command === 'up') return up(rest)
  if (command === 'sweep') {
    const swept = await sweepStaleLabs()
    console.log(swept.length > 0 ? `removed ${swept.join(', ')}` : 'nothing to remove')
    return
  }
  fail(`unknown command ${command}\n${USAGE}`)
}

try {
  await main(process.argv.slice(2))
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error))
  process.exit(1)
}
