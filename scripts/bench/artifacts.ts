// Artifact distribution benchmark: a 64 MB artifact from n1 to 8 nodes at once. km1s (push on n1, then 8
// pulls at once, a swarm over /km1s/blocks/1.0.0) beside a baseline in the same run: the 8 nodes download the
// same file from n1 over plain HTTP at once. Reports total time and bytes n1 uploaded for both (ratios), the
// push time and the pulling agents' peak RSS. Needs root (the lab). Usage: scripts/bench/artifacts [--quick]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { client, km1sOk, startCluster, waitForAlive } from '../../test/lab/cluster.ts'
import type { LabNode } from '../../test/lab/lab.ts'
import { printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const PULLERS = 8
const SIZE = 64 * 2 ** 20
const ROUNDS = quick ? 1 : 3
/** Each node's upload cap in Mbit/s (null: none): the lab's veths as they are, and a 100 Mbit/s LAN. */
const LINKS: Array<number | null> = [null, 100]
const NODE = resolve(import.meta.dirname, '../../node_modules/node/bin/node')
const log = (line: string) => process.stdout.write(`${line}\n`)

if (process.getuid?.() !== 0) {
  process.stderr.write('The artifacts benchmark needs root (the lab).\n')
  process.exit(1)
}

const SERVER = `
const http = require('node:http'), fs = require('node:fs')
let sent = 0
http.createServer((req, res) => {
  if (req.url === '/sent') return res.end(String(sent))
  const s = fs.createReadStream(process.argv[1])
  s.on('data', (c) => { sent += c.length })
  res.writeHead(200, { 'content-length': fs.statSync(process.argv[1]).size })
  s.pipe(res)
}).listen(8000, '0.0.0.0', () => console.log('listening'))
`
const DOWNLOAD = `
const fs = require('node:fs'), { pipeline } = require('node:stream/promises'), { Readable } = require('node:stream')
fetch(process.argv[1]).then((r) => pipeline(Readable.fromWeb(r.body), fs.createWriteStream(process.argv[2])))
  .catch((e) => { console.error(e.message); process.exit(1) })
`

function inNetns(node: LabNode, cmd: string[]): ChildProcess {
  return spawn(
    'setpriv',
    ['--pdeathsig', 'SIGKILL', 'nsenter', `--net=/run/netns/${node.netns}`, '--', ...cmd],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
}

/**
 * Caps every node's upload at `mbit` (a LAN link: the lab's veths are otherwise as fast as the CPU) with a
 * bridge-family nftables policer in the lab's LAN namespace; null removes the cap.
 */
function uplinkLimit(lanNetns: string, nodes: LabNode[], mbit: number | null): void {
  const kbytes = mbit === null ? 0 : Math.round((mbit * 1e6) / 8 / 1000)
  const rules =
    mbit === null
      ? ''
      : nodes
          .map(
            (n) => `    iifname "v${n.index}" limit rate over ${kbytes} kbytes/second burst 256 kbytes drop`,
          )
          .join('\n')
  const script = `table bridge km1sbench\ndelete table bridge km1sbench\n${
    mbit === null
      ? ''
      : `table bridge km1sbench {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n${rules}\n  }\n}\n`
  }`
  const r = spawnSync('nsenter', [`--net=/run/netns/${lanNetns}`, '--', 'nft', '-f', '-'], {
    input: script,
    encoding: 'utf8',
  })
  if (r.status !== 0) throw new Error(`nft failed: ${r.stderr}`)
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(readFileSync(path)).digest('hex')
}

async function httpBaseline(seed: LabNode, pullers: LabNode[], file: string, dir: string, want: string) {
  const server = inNetns(seed, [NODE, '-e', SERVER, file])
  await new Promise<void>((res, rej) => {
    server.stdout?.once('data', () => res())
    server.once('exit', (code) => rej(new Error(`the HTTP server exited (${code})`)))
  })
  try {
    const url = `http://${seed.address}:8000/f`
    const t0 = performance.now()
    const results = await Promise.all(
      pullers.map((n) =>
        n.exec([NODE, '-e', DOWNLOAD, url, join(dir, `http-${n.name}.out`)], { timeoutMs: 300_000 }),
      ),
    )
    const ms = performance.now() - t0
    for (const r of results) if (r.code !== 0) throw new Error(`an HTTP download failed: ${r.stderr}`)
    for (const n of pullers)
      if ((await sha256(join(dir, `http-${n.name}.out`))) !== want) throw new Error('an HTTP copy differs')
    const sent = Number(
      (
        await seed.exec([
          NODE,
          '-e',
          "fetch('http://127.0.0.1:8000/sent').then((r) => r.text()).then(console.log)",
        ])
      ).stdout,
    )
    return { ms, uploaded: sent }
  } finally {
    server.kill('SIGKILL')
  }
}

/** The peak resident set of a process since its last reset (`clear_refs` 5), in bytes. */
function vmHwm(pid: number): number {
  const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  return Number(kb ?? 0) * 1024
}

async function km1sRun(seed: LabNode, pullers: LabNode[], file: string, ref: string) {
  const servedBefore = (await client(seed).artifactsStatus()).bytesServed
  const tPush = performance.now()
  await km1sOk(seed, ['push', file, '--name', ref])
  const pushMs = performance.now() - tPush
  // Peak RSS from the kernel's high-water mark, reset first: polling each agent's API while it pulls would
  // add work to the side being measured that the HTTP baseline does not have.
  for (const n of pullers) writeFileSync(`/proc/${n.pid()}/clear_refs`, '5')
  const t0 = performance.now()
  const out = await Promise.all(pullers.map((n) => km1sOk(n, ['--json', 'pull', ref, '--arch', 'any'])))
  const ms = performance.now() - t0
  const peakRss = Math.max(...pullers.map((n) => vmHwm(n.pid() as number)))
  const served = (await client(seed).artifactsStatus()).bytesServed - servedBefore
  const all = await Promise.all(
    [seed, ...pullers].map(async (n) => (await client(n).artifactsStatus()).bytesServed),
  )
  log(`  bytes served per node (cumulative, MiB): ${all.map((b) => Math.round(b / 2 ** 20)).join(' ')}`)
  const peers = out.map((o) => (JSON.parse(o) as { peers: number }).peers)
  return { ms, uploaded: served, pushMs, peakRss, peers }
}

async function main(): Promise<void> {
  const c = await startCluster(PULLERS + 1, { name: 'artbench' })
  try {
    await waitForAlive(c.nodes, c.nodes, 60_000)
    const [seed, ...pullers] = c.nodes as [LabNode, ...LabNode[]]
    const rows: Row[] = []
    const runs: Array<{
      link: string
      round: number
      http: { ms: number; uploaded: number }
      km1s: Awaited<ReturnType<typeof km1sRun>>
    }> = []
    for (const link of LINKS) {
      uplinkLimit(c.lab.lanNetns, c.nodes, link)
      const label = link === null ? 'unlimited veth' : `${link} Mbit/s uplinks`
      for (let round = 1; round <= ROUNDS; round++) {
        const file = join(c.lab.dir, `artifact-${round}.bin`)
        const data = randomBytes(SIZE)
        writeFileSync(file, data)
        const want = createHash('sha256').update(data).digest('hex')
        const http = await httpBaseline(seed, pullers, file, c.lab.dir, want)
        log(
          `${label}, round ${round}: HTTP ${(http.ms / 1000).toFixed(2)} s, n1 uploaded ${(http.uploaded / SIZE).toFixed(2)}×`,
        )
        const k = await km1sRun(seed, pullers, file, `bench-${link ?? 0}:${round}`)
        log(
          `${label}, round ${round}: km1s ${(k.ms / 1000).toFixed(2)} s, n1 uploaded ${(k.uploaded / SIZE).toFixed(2)}×, push ${(k.pushMs / 1000).toFixed(2)} s, peers per pull ${k.peers.join(',')}`,
        )
        runs.push({ link: label, round, http, km1s: k })
        for (const n of c.nodes)
          await km1sOk(n, ['artifacts', 'rm', `bench-${link ?? 0}:${round}`]).catch(() => '')
        for (const n of c.nodes) await km1sOk(n, ['artifacts', 'gc'])
      }
      const mine = runs.filter((r) => r.link === label)
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN
      const pick = (f: (r: (typeof runs)[number]) => number) => median(mine.map(f))
      rows.push(
        {
          metric: `${label}: total time, 8 pulls at once`,
          value: pick((r) => r.km1s.ms) / 1000,
          unit: 's',
          baseline: pick((r) => r.http.ms) / 1000,
          target: '≤ baseline',
        },
        {
          metric: `${label}: bytes uploaded by n1 / size`,
          value: pick((r) => r.km1s.uploaded) / SIZE,
          unit: '×',
          baseline: pick((r) => r.http.uploaded) / SIZE,
          target: '≤ 2',
        },
        { metric: `${label}: push of 64 MiB on n1`, value: pick((r) => r.km1s.pushMs) / 1000, unit: 's' },
        {
          metric: `${label}: peak RSS of a pulling agent`,
          value: pick((r) => r.km1s.peakRss) / 2 ** 20,
          unit: 'MiB',
        },
      )
    }
    uplinkLimit(c.lab.lanNetns, c.nodes, null)
    printRows(
      `artifacts: 64 MiB from n1 to ${PULLERS} nodes at once (km1s swarm; baseline plain HTTP from n1), median of ${ROUNDS}`,
      rows,
    )
    log(`wrote ${writeJson('artifacts', { rows, runs })}`)
  } finally {
    await c.lab.down()
  }
}

await main()
