// shmooze.js as an ES module: import shmooze, {Endpoint} from "/static/shmooze.mjs";
import "./shmooze.js";

const shmooze = globalThis.shmooze;
export const Endpoint = shmooze.Endpoint;
export const endpoints = shmooze.endpoints;
export const connect = shmooze.connect;
export default shmooze;
