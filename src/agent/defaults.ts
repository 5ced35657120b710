// The agent's defaults that the command line shows in its help. A module of its own so that the CLI can
// print help and talk to the API without loading the agent (libp2p, LevelDB): see scripts/build.mjs.

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/4100']

/** Where a Raspberry Pi's boot partition puts a join token to be consumed at first start. */
export const DEFAULT_TOKEN_FILE = '/boot/firmware/km1s-token'
